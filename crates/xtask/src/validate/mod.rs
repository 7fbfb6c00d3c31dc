//! `cargo xtask validate`: render every overlay and Argo CD path, then check schemas, policy and rules.

pub mod argocd;
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
const ARGOCD_PATHS: &[&str] = &[argocd::ARGOCD_DIR, argocd::ADDONS_PLATFORM_DIR];

pub fn run() -> Result<()> {
    crate::prereqs::ensure(crate::prereqs::Needs { python_tools: true, wrk: false, nix: false, gitops: true })?;
    schemas::ensure_tools()?;
    validate_tree(&crate::workspace_root(), &schemas::upstream_crds()?)
}

/// Validates the GitOps tree under `root` (its `environments/`, `gitops/` and `.checkov.yaml`), custom
/// resources against the upstream CRD files under `crds`; the validators themselves come from the
/// workspace. The error lists every problem of the failing step.
pub fn validate_tree(root: &Path, crds: &Path) -> Result<()> {
    let environments = environments(root)?;
    let regions: Vec<RegionFile> = environments.iter().map(|(_, region)| region.clone()).collect();
    let mut failures = Vec::new();
    let mut everything = Vec::new();
    for (dir, region) in &environments {
        let objects = render(root, dir)?;
        println!("xtask: rendered {dir}: {} objects", objects.len());
        failures.extend(policy::check(region, &objects, &regions));
        everything.extend(objects);
    }
    for dir in ARGOCD_PATHS {
        let objects = render(root, dir)?;
        println!("xtask: rendered {dir}: {} objects", objects.len());
        everything.extend(objects);
    }
    failures.extend(schemas::validate(&everything, crds)?);
    failures.extend(argocd::check(&everything, &regions));
    refuse(failures, "schemas, policy or residency")?;
    println!("xtask: {} objects valid against their schemas and the policy", everything.len());
    prometheus::check(root)?;
    let findings = security::scan(&root.join(".checkov.yaml"), &everything)?;
    refuse(findings, "checkov; a justified skip goes in .checkov.yaml")?;
    println!("xtask: checkov found nothing in the rendered manifests");
    Ok(())
}

/// An error listing `problems` (found by `what`), or `Ok` when there are none.
fn refuse(problems: Vec<String>, what: &str) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    bail!("{} problems in the rendered manifests ({what}):\n  {}", problems.len(), problems.join("\n  "))
}

/// Every `environments/<region>/<stage>` directory and its `region.yaml`, checked against the path.
fn environments(root: &Path) -> Result<Vec<(String, RegionFile)>> {
    let mut found = Vec::new();
    for region in sorted_dirs(&root.join("environments"))? {
        for stage in sorted_dirs(&region)? {
            let file = stage.join("region.yaml");
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            let facts = region_facts(&text).with_context(|| format!("{}: invalid", file.display()))?;
            let problems = policy::check_region_file(&facts);
            if !problems.is_empty() {
                bail!("{}: {}", file.display(), problems.join("; "));
            }
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

/// A region.yaml: an `EnvironmentFacts` local-config object (so Kustomize can use it and does not
/// deploy it) whose other top-level keys are the facts.
fn region_facts(text: &str) -> Result<RegionFile> {
    let mut value: serde_json::Value = serde_norway::from_str(text)?;
    let object = value.as_object_mut().context("not a mapping")?;
    let header = [object.remove("apiVersion"), object.remove("kind"), object.remove("metadata")];
    let [api_version, kind, metadata] = header.map(Option::unwrap_or_default);
    if api_version != "quilla.io/v1" || kind != "EnvironmentFacts" || metadata["name"] != "environment" {
        bail!("must be apiVersion quilla.io/v1, kind EnvironmentFacts, metadata.name environment");
    }
    if metadata["annotations"]["config.kubernetes.io/local-config"] != "true" {
        bail!("must be annotated config.kubernetes.io/local-config: \"true\" (Kustomize must not deploy it)");
    }
    Ok(serde_json::from_value(value)?)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    sorted_entries(dir, Path::is_dir)
}

/// The entries of `dir` (not below it) that `keep` accepts, sorted by path.
pub fn sorted_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if keep(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
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

#[cfg(test)]
mod tests {
    //! The whole pipeline over a copy of the repository's tree: the copy passes, and each kind of
    //! break (render, schema, policy, residency, rule, security) fails `validate_tree` for its reason.

    use super::*;

    /// A copy of the GitOps tree (`environments/`, `gitops/`, `.checkov.yaml`) in a scratch directory.
    use platform::testkit::TempDir;

    struct TreeCopy(TempDir);

    impl TreeCopy {
        fn new() -> Self {
            let scratch = TempDir::new("tree");
            let root = crate::workspace_root();
            for part in ["environments", "gitops"] {
                copy_dir(&root.join(part), &scratch.path().join(part));
            }
            std::fs::copy(root.join(".checkov.yaml"), scratch.path().join(".checkov.yaml"))
                .expect("copy .checkov.yaml");
            TreeCopy(scratch)
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        /// Replaces the one occurrence of `from` in `file` with `to`.
        fn edit(&self, file: &str, from: &str, to: &str) {
            let path = self.root().join(file);
            let text = std::fs::read_to_string(&path).expect("read");
            assert_eq!(text.matches(from).count(), 1, "`{from}` should occur once in {file}");
            std::fs::write(&path, text.replace(from, to)).expect("write");
        }

        /// The error `validate_tree` gives for this copy, or a panic when the copy passes.
        fn failure(&self) -> String {
            let error = validate_tree(self.root(), &crds()).expect_err("the broken tree passed validation");
            format!("{error:#}")
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir").map(|entry| entry.expect("entry")) {
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }

    fn tools() {
        schemas::ensure_tools().expect("npm packages");
    }

    /// The upstream CRD files (`QUILLA_UPSTREAM_CRDS`, or shared/schemas beside the repository).
    fn crds() -> PathBuf {
        schemas::upstream_crds().expect("upstream CRD files")
    }

    /// The error of the whole validation over a copy of the tree with each `(file, from, to)` edit made.
    fn failure_after(edits: &[(&str, &str, &str)]) -> String {
        tools();
        let tree = TreeCopy::new();
        for (file, from, to) in edits {
            tree.edit(file, from, to);
        }
        tree.failure()
    }

    #[test]
    fn the_copied_tree_passes() {
        tools();
        validate_tree(TreeCopy::new().root(), &crds()).expect("the repository's tree is valid");
    }

    #[test]
    fn an_overlay_that_does_not_render_fails() {
        let error = failure_after(&[(
            "environments/spain/dev/kustomization.yaml",
            "gitops/apps/notification-service\n",
            "gitops/apps/nope\n",
        )]);
        assert!(error.contains("kubectl kustomize environments/spain/dev failed"), "{error}");
    }

    #[test]
    fn misspelt_fields_fail_schema_validation() {
        let error = failure_after(&[
            (
                "gitops/apps/notification-service/deployment.yaml",
                "readOnly: true\n            - name: credentials",
                "readOnlyy: true\n            - name: credentials",
            ),
            ("gitops/apps/transaction-api/external-secret.yaml", "refreshInterval:", "refreshIntervall:"),
        ]);
        assert!(error.contains("(schemas, policy or residency)"), "{error}");
        let lines = |needle: &str| error.lines().filter(|line| line.contains(needle)).count();
        // Each of the four overlays renders both bases.
        assert_eq!(lines("Deployment quilla/notification-service"), 4, "{error}");
        assert_eq!(lines("ExternalSecret quilla/transaction-api"), 4, "{error}");
        assert!(error.contains("readOnlyy") && error.contains("refreshIntervall"), "{error}");
    }

    #[test]
    fn a_prod_autoscaler_below_two_replicas_fails_the_policy() {
        let error = failure_after(&[(
            "gitops/components/stage-prod/kustomization.yaml",
            "/spec/minReplicas, value: 3",
            "/spec/minReplicas, value: 1",
        )]);
        assert!(error.contains("environments/mexico/prod: HorizontalPodAutoscaler"), "{error}");
        assert!(error.contains("minReplicas must be at least 2"), "{error}");
    }

    #[test]
    fn a_spain_overlay_reading_a_mexico_secret_fails_residency() {
        let error = failure_after(&[(
            "environments/spain/prod/region.yaml",
            "secretsPrefix: quilla/spain/prod",
            "secretsPrefix: quilla/mexico/prod",
        )]);
        assert!(error.contains("environments/spain/prod: ClusterSecretStore aws-secrets-manager"), "{error}");
        assert!(error.contains("`quilla/mexico/prod` of region mexico (data residency)"), "{error}");
    }

    #[test]
    fn a_spain_overlay_trusting_a_mexico_token_issuer_fails_residency() {
        let error = failure_after(&[(
            "environments/spain/prod/kustomization.yaml",
            "commonAnnotations:\n",
            "patches:\n  - target: {kind: Deployment, name: transaction-api}\n    patch: |-\n      \
             - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: QUILLA_AUTH__ISSUERS, \
             value: '[{issuer = \"https://api.mx.quilla.example/auth\", jwks_file = \"/etc/quilla/auth/jwks.json\"}]'}}\n\
             commonAnnotations:\n",
        )]);
        let deployment = "environments/spain/prod: Deployment quilla/transaction-api: container transaction-api";
        assert!(
            error.contains(&format!(
                "{deployment}: trusts `https://api.mx.quilla.example/auth`, the issuer of mexico/prod (data residency)"
            )),
            "{error}"
        );
        assert!(error.contains(r#"expected exactly ["https://api.es.quilla.example/auth"]"#), "{error}");
    }

    #[test]
    fn an_alert_that_no_longer_fires_fails_its_rule_test() {
        let error = failure_after(&[(
            "gitops/platform/monitoring/prometheus-rules.yaml",
            "(outbox_pending_events) > 1000",
            "(outbox_pending_events) > 100000",
        )]);
        assert!(error.contains("promtool test rules"), "{error}");
        assert!(error.contains("QuillaOutboxBacklogHigh"), "{error}");
    }

    #[test]
    fn an_object_in_the_default_namespace_fails_the_security_scan() {
        let error = failure_after(&[(
            "environments/spain/dev/kustomization.yaml",
            "commonAnnotations:\n",
            "patches:\n  - target: {kind: ServiceAccount, name: notification-service}\n    patch: |-\n      \
             - {op: replace, path: /metadata/namespace, value: default}\ncommonAnnotations:\n",
        )]);
        assert!(error.contains("(checkov; a justified skip goes in .checkov.yaml)"), "{error}");
        assert!(
            error.contains("environments/spain/dev: ServiceAccount.default.notification-service: CKV_K8S_21"),
            "{error}"
        );
    }

    #[test]
    fn chaos_experiments_in_a_prod_overlay_fail_the_policy() {
        let error = failure_after(&[(
            "environments/spain/prod/kustomization.yaml",
            "  - ../../../gitops/apps/notification-service\n",
            "  - ../../../gitops/apps/notification-service\n  - ../../../gitops/chaos\n",
        )]);
        assert!(
            error.contains(
                "environments/spain/prod: PodChaos quilla/transaction-api-pod-kill: a chaos experiment in prod"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_chaos_experiment_naming_no_existing_alert_fails() {
        let error = failure_after(&[(
            "gitops/chaos/webhook-delay.yaml",
            "quilla.io/expected-alert: QuillaOutboxBacklogGrowing",
            "quilla.io/expected-alert: QuillaWebhookSlow",
        )]);
        assert!(
            error.contains(
                "environments/mexico/dev: NetworkChaos quilla/webhook-delay: quilla.io/expected-alert `QuillaWebhookSlow` \
                 is not an alert"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_misspelt_chaos_field_fails_its_upstream_crd() {
        let error =
            failure_after(&[("gitops/chaos/transaction-api-pod-kill.yaml", "gracePeriod: 0", "gracePeriods: 0")]);
        assert!(error.contains("environments/spain/dev: PodChaos quilla/transaction-api-pod-kill: /spec: "), "{error}");
        assert!(error.contains("'gracePeriods' was unexpected"), "{error}");
    }
}
