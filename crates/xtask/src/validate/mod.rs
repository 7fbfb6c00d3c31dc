//! `cargo xtask validate`: render every overlay and Argo CD path, then check schemas, policy and rules.

pub mod policy;
pub mod prometheus;
pub mod schemas;
pub mod security;

/// One object out of `kubectl kustomize`, with the directory it was rendered from.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The kustomization directory, relative to the workspace root (e.g. `environments/spain/prod/apps`).
    pub source: String,
    /// The object as JSON.
    pub object: serde_json::Value,
}

impl Rendered {
    /// `Kind/name` (with the namespace when there is one), for messages.
    pub fn describe(&self) -> String {
        let kind = self.object["kind"].as_str().unwrap_or("<no kind>");
        let name = self.object["metadata"]["name"].as_str().unwrap_or("<no name>");
        match self.object["metadata"]["namespace"].as_str() {
            Some(namespace) => format!("{}: {kind} {namespace}/{name}", self.source),
            None => format!("{}: {kind} {name}", self.source),
        }
    }
}

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use policy::RegionFile;

/// Argo CD source paths rendered besides the environments.
const ARGOCD_PATHS: &[&str] = &["gitops/argocd"];

pub fn run(_args: &[String]) -> Result<()> {
    let root = crate::workspace_root();
    crate::prereqs::ensure(crate::prereqs::Needs { python_tools: true, wrk: false, nix: false, gitops: true })?;
    schemas::ensure_tools()?;
    let environments = environments(&root)?;
    let regions: Vec<RegionFile> = environments.iter().map(|(_, region)| region.clone()).collect();
    let mut failures = Vec::new();
    let mut everything = Vec::new();
    for (dir, region) in &environments {
        let objects = render(&root, dir)?;
        println!("xtask: rendered {dir}: {} objects", objects.len());
        failures.extend(policy::check(region, &objects, &regions));
        everything.extend(objects);
    }
    for dir in ARGOCD_PATHS {
        let objects = render(&root, dir)?;
        println!("xtask: rendered {dir}: {} objects", objects.len());
        everything.extend(objects);
    }
    failures.extend(schemas::validate(&everything)?);
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("  {failure}");
        }
        bail!("{} problems in the rendered manifests (schemas, policy or residency)", failures.len());
    }
    println!("xtask: {} objects valid against their schemas and the policy", everything.len());
    prometheus::check(&root)?;
    security::scan(&root, &everything)?;
    Ok(())
}

/// Every `environments/<region>/<stage>` directory and its `region.yaml`, checked against the path.
fn environments(root: &Path) -> Result<Vec<(String, RegionFile)>> {
    let mut found = Vec::new();
    for region in sorted_dirs(&root.join("environments"))? {
        for stage in sorted_dirs(&region)? {
            let file = stage.join("region.yaml");
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            let facts: RegionFile =
                serde_norway::from_str(&text).with_context(|| format!("{}: invalid", file.display()))?;
            let dir = stage.strip_prefix(root).unwrap_or(&stage).to_string_lossy().into_owned();
            if dir != format!("environments/{}/{}", facts.region, facts.stage) {
                bail!(
                    "{}: region `{}` and stage `{}` do not match its directory",
                    file.display(),
                    facts.region,
                    facts.stage
                );
            }
            found.push((dir, facts));
        }
    }
    if found.is_empty() {
        bail!("no environments/<region>/<stage>/region.yaml found");
    }
    Ok(found)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// `kubectl kustomize <dir>`, parsed into objects.
pub fn render(root: &Path, dir: &str) -> Result<Vec<Rendered>> {
    let output =
        Command::new("kubectl").args(["kustomize", dir]).current_dir(root).output().context("run kubectl kustomize")?;
    if !output.status.success() {
        bail!("kubectl kustomize {dir} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    parse_documents(dir, &String::from_utf8_lossy(&output.stdout))
}

/// Every non-empty YAML document of `text` as an object from `source`.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Rendered>> {
    use serde::Deserialize;
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let object = serde_json::Value::deserialize(document).with_context(|| format!("{source}: invalid YAML"))?;
        if !object.is_null() {
            objects.push(Rendered { source: source.to_owned(), object });
        }
    }
    Ok(objects)
}
