//! Security scan of the rendered manifests with checkov, in its own pinned virtualenv.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::Rendered;

/// The frozen requirements of the scanner (checkov pins many libraries of its own, so it lives
/// in a venv of its own instead of beside moto and the other test tools).
const REQUIREMENTS: &str = ".ci/security-scan.txt";

/// checkov's JSON report for one framework. With nothing to scan it prints bare counts, without `results`.
#[derive(Debug, Deserialize)]
struct Report {
    results: Option<Results>,
    summary: Option<Summary>,
}

#[derive(Debug, Deserialize)]
struct Results {
    failed_checks: Vec<FailedCheck>,
}

#[derive(Debug, Deserialize)]
struct Summary {
    parsing_errors: u64,
}

#[derive(Debug, Deserialize)]
struct FailedCheck {
    check_id: String,
    check_name: String,
    /// `Kind.namespace.name`.
    resource: String,
    /// The scanned file, relative to the scanned directory (`/0003-environments-spain-dev.json`).
    file_path: String,
}

/// Runs checkov over every rendered object with `config` (the repository's `.checkov.yaml`, whose
/// skips each carry their reason). Returns one line per failed check: `<source>: <resource>: <id> <name>`.
/// An empty list means the scan passed; a scanner that cannot run or parse a manifest is an `Err`.
pub fn scan(config: &Path, objects: &[Rendered]) -> Result<Vec<String>> {
    let checkov = ensure_checkov()?;
    let scratch = platform::testkit::TempDir::try_new("checkov")?;
    write_and_scan(config, &checkov, scratch.path(), objects)
}

fn write_and_scan(config: &Path, checkov: &Path, dir: &Path, objects: &[Rendered]) -> Result<Vec<String>> {
    // One JSON file per object, named after its index: checkov reads JSON manifests, JSON keeps
    // numbers exact, and the index maps each finding back to the overlay it came from.
    for (index, object) in objects.iter().enumerate() {
        let name = format!("{index:04}-{}.json", object.source.replace('/', "-"));
        std::fs::write(dir.join(name), serde_json::to_vec_pretty(&object.object)?)?;
    }
    println!("xtask: run checkov over {} rendered objects", objects.len());
    let output = Command::new(checkov)
        .arg("--config-file")
        .arg(config)
        .args(["--output", "json", "--directory"])
        .arg(dir)
        .output()
        .context("run checkov")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Exit 1 means "failed checks"; anything else but 0 is the scanner itself failing.
    if !matches!(output.status.code(), Some(0 | 1)) {
        bail!("checkov failed ({}):\n{stderr}", output.status);
    }
    let report: Report = serde_json::from_str(&stdout)
        .with_context(|| format!("checkov printed no JSON report:\n{stdout}\n{stderr}"))?;
    let (Some(results), Some(summary)) = (report.results, report.summary) else {
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        bail!("checkov scanned none of the {} rendered objects:\n{stderr}", objects.len());
    };
    if summary.parsing_errors > 0 {
        bail!("checkov could not parse {} of the rendered objects:\n{stderr}", summary.parsing_errors);
    }
    Ok(results
        .failed_checks
        .iter()
        .map(|failed| {
            let source = failed
                .file_path
                .trim_start_matches('/')
                .get(..4)
                .and_then(|index| index.parse::<usize>().ok())
                .and_then(|index| objects.get(index))
                .map_or(failed.file_path.as_str(), |object| object.source.as_str());
            format!("{source}: {}: {} {}", failed.resource, failed.check_id, failed.check_name)
        })
        .collect())
}

/// `checkov` from a venv under ~/.cache/quilla, (re)installed when the requirements change.
fn ensure_checkov() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home).join(".cache/quilla/checkov-venv");
    let requirements = crate::workspace_root().join(REQUIREMENTS);
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read(&requirements).with_context(|| format!("read {REQUIREMENTS}"))?;
    let _lock = crate::infra::install_lock("checkov-venv")?;
    if std::fs::read(&stamp).ok().as_deref() != Some(wanted.as_slice()) {
        println!("xtask: installing checkov into {}", venv.display());
        let _ = std::fs::remove_dir_all(&venv);
        crate::infra::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        crate::infra::run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check", "-r"])
                .arg(&requirements),
        )?;
        std::fs::write(&stamp, wanted)?;
    }
    Ok(venv.join("bin/checkov"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> PathBuf {
        crate::workspace_root().join(".checkov.yaml")
    }

    fn deployment_of(rendered: &[Rendered], name: &str) -> Rendered {
        rendered
            .iter()
            .find(|r| r.object["kind"] == "Deployment" && r.object["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    /// A change to a copy of the rendered transaction-api Deployment, and the check that must find it.
    type Weakening = (&'static str, &'static str, fn(&mut serde_json::Value));

    /// The breakages policy.rs once refused itself and now leaves to checkov (its header lists them), and
    /// a few more: each is a copy of the Deployment named after it, with the check id that must fail on it.
    const WEAKENINGS: &[Weakening] = &[
        ("privileged", "CKV_K8S_16", |pod| pod["containers"][0]["securityContext"]["privileged"] = json!(true)),
        ("host-port", "CKV_K8S_26", |pod| pod["containers"][0]["ports"][0]["hostPort"] = json!(8080)),
        ("host-pid", "CKV_K8S_17", |pod| pod["hostPID"] = json!(true)),
        ("host-ipc", "CKV_K8S_18", |pod| pod["hostIPC"] = json!(true)),
        ("host-network", "CKV_K8S_19", |pod| pod["hostNetwork"] = json!(true)),
        ("token-mounted", "CKV_K8S_38", |pod| pod["automountServiceAccountToken"] = json!(true)),
        ("escalation", "CKV_K8S_20", |pod| {
            pod["containers"][0]["securityContext"].as_object_mut().map(|s| s.remove("allowPrivilegeEscalation"));
        }),
        ("writable-root", "CKV_K8S_22", |pod| {
            pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = json!(false);
        }),
        ("keeps-capabilities", "CKV_K8S_37", |pod| {
            pod["containers"][0]["securityContext"]["capabilities"]["drop"] = json!(["NET_RAW"]);
        }),
        ("adds-capability", "CKV_K8S_25", |pod| {
            pod["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]);
        }),
        ("unconfined", "CKV_K8S_31", |pod| pod["securityContext"]["seccompProfile"]["type"] = json!("Unconfined")),
        ("no-cpu-request", "CKV_K8S_10", |pod| {
            pod["containers"][0]["resources"]["requests"].as_object_mut().map(|r| r.remove("cpu"));
        }),
        ("no-cpu-limit", "CKV_K8S_11", |pod| {
            pod["containers"][0]["resources"]["limits"].as_object_mut().map(|l| l.remove("cpu"));
        }),
        ("no-memory-request", "CKV_K8S_12", |pod| {
            pod["containers"][0]["resources"]["requests"].as_object_mut().map(|r| r.remove("memory"));
        }),
        ("no-memory-limit", "CKV_K8S_13", |pod| {
            pod["containers"][0]["resources"]["limits"].as_object_mut().map(|l| l.remove("memory"));
        }),
        ("no-liveness", "CKV_K8S_8", |pod| {
            pod["containers"][0].as_object_mut().map(|c| c.remove("livenessProbe"));
        }),
        ("no-readiness", "CKV_K8S_9", |pod| {
            pod["containers"][0].as_object_mut().map(|c| c.remove("readinessProbe"));
        }),
        ("secret-variable", "CKV_K8S_35", |pod| {
            pod["containers"][0]["env"] = json!([{
                "name": "QUILLA_DATABASE__URL",
                "valueFrom": { "secretKeyRef": { "name": "transaction-api-credentials", "key": "database-url" } }
            }]);
        }),
        ("secret-env-from", "CKV_K8S_35", |pod| {
            pod["containers"][0]["envFrom"] = json!([{ "secretRef": { "name": "transaction-api-credentials" } }]);
        }),
        ("latest", "CKV_K8S_14", |pod| pod["containers"][0]["image"] = json!("registry/quilla/app:latest")),
        ("tag-only", "CKV_K8S_43", |pod| pod["containers"][0]["image"] = json!("registry/quilla/app:1.2.3")),
    ];

    #[test]
    fn the_rendered_deployment_passes_and_each_weakening_is_found() {
        let rendered = super::super::render(&crate::workspace_root(), "environments/spain/prod").expect("render");
        // The whole overlay: some checks look across objects (a NetworkPolicy selecting each pod). Its
        // migration Jobs pass without probes.
        assert!(rendered.iter().any(|r| r.object["kind"] == "Job"), "the overlay renders its migration Jobs");
        assert_eq!(scan(&config(), &rendered).expect("scan"), Vec::<String>::new());
        let good = deployment_of(&rendered, "transaction-api");

        let mut weakened: Vec<Rendered> = (WEAKENINGS.iter())
            .map(|(name, _, weaken)| {
                let mut copy = good.clone();
                copy.object["metadata"]["name"] = json!(name);
                weaken(&mut copy.object["spec"]["template"]["spec"]);
                copy
            })
            .collect();
        let mut default_namespace = good;
        default_namespace.object["metadata"]["name"] = json!("in-default");
        default_namespace.object["metadata"]["namespace"] = json!("default");
        default_namespace.source = "fixture/default".to_owned();
        weakened.push(default_namespace);

        let findings = scan(&config(), &weakened).expect("scan");
        let found = |needle: &str| findings.iter().any(|line| line.contains(needle));
        for (name, check, _) in WEAKENINGS {
            let needle = format!("environments/spain/prod: Deployment.quilla.{name}: {check} ");
            assert!(found(&needle), "{check} did not find `{name}`: {findings:#?}");
        }
        assert!(found("fixture/default: Deployment.default.in-default: CKV_K8S_21 "), "{findings:#?}");
    }
}
