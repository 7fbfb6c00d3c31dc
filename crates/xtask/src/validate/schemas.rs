//! Strict schema validation of rendered objects: built-in kinds with kubernetes-validate, custom resources with
//! the @kubernetes-models validators (crates/xtask/schemas); unknown fields and unknown kinds are errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use super::Rendered;

/// The Kubernetes version whose built-in schemas we validate against: one that EKS offers in standard support.
/// 1.35: on EKS since January 2026, in standard support until 2027-03-27 (endoflife.date/amazon-eks); the EKS
/// user guide's release calendar (versioning/kubernetes-versions.adoc) ends 1.33's on 2026-07-29 and 1.34's
/// on 2026-12-02. kubernetes-validate 1.37.0 ships schemas up to 1.37 (its kubernetes-json-schema/ data).
pub const KUBERNETES_VERSION: &str = "1.35";

/// The API groups served by Kubernetes itself (validated by kubernetes-validate, not by a CRD schema).
const BUILTIN_GROUPS: &[&str] = &[
    "apps",
    "autoscaling",
    "policy",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "batch",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "node.k8s.io",
    "certificates.k8s.io",
];

/// Whether `api_version` (e.g. `v1`, `apps/v1`) belongs to a built-in API group.
pub fn is_builtin(api_version: &str) -> bool {
    match api_version.split_once('/') {
        None => api_version == "v1",
        Some((group, _)) => BUILTIN_GROUPS.contains(&group),
    }
}

/// crates/xtask/schemas: the npm package and the two validator scripts.
fn schemas_dir() -> PathBuf {
    crate::workspace_root().join("crates/xtask/schemas")
}

/// Installs the pinned npm packages (`npm ci`) when node_modules is missing or older than package-lock.json.
pub fn ensure_tools() -> anyhow::Result<()> {
    let dir = schemas_dir();
    let _lock = crate::infra::install_lock("schemas-npm-ci")?;
    if is_installed(&dir) {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .status()
        .context("running npm ci (is Node.js installed?)")?;
    ensure!(status.success(), "npm ci in {} failed: {status}", dir.display());
    Ok(())
}

/// Whether npm's record of the installed tree (node_modules/.package-lock.json) is newer than package-lock.json.
fn is_installed(dir: &Path) -> bool {
    let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (modified(dir.join("node_modules/.package-lock.json")), modified(dir.join("package-lock.json"))) {
        (Some(installed), Some(locked)) => installed >= locked,
        _ => false,
    }
}

/// Validates every object strictly; returns one line per error (`<source>: <Kind> <ns/name>: <pointer>: <message>`).
/// An empty list means every object is valid; a tool that cannot run is an `Err`.
pub fn validate(objects: &[Rendered]) -> anyhow::Result<Vec<String>> {
    let (builtin, custom): (Vec<&Rendered>, Vec<&Rendered>) =
        objects.iter().partition(|r| is_builtin(r.object["apiVersion"].as_str().unwrap_or_default()));
    let dir = schemas_dir();
    let mut errors = Vec::new();
    if !builtin.is_empty() {
        let mut python = Command::new("python3");
        // -B: no __pycache__ written into the source tree.
        python.arg("-B").arg(dir.join("validate-builtin.py")).args(["--kubernetes-version", KUBERNETES_VERSION]);
        errors.extend(run_validator(python, &builtin)?);
    }
    if !custom.is_empty() {
        let mut node = Command::new("node");
        node.arg(dir.join("validate-crds.mjs"));
        errors.extend(run_validator(node, &custom)?);
    }
    Ok(errors)
}

/// Runs one validator script on `objects` (written to a temporary JSON file passed as the last argument).
fn run_validator(mut command: Command, objects: &[&Rendered]) -> anyhow::Result<Vec<String>> {
    let scratch = platform::testkit::TempDir::try_new("validate")?;
    let input = scratch.path().join("objects.json");
    let items: Vec<serde_json::Value> =
        objects.iter().map(|r| serde_json::json!({ "source": r.source, "object": r.object })).collect();
    std::fs::write(&input, serde_json::to_vec(&items)?).with_context(|| format!("writing {}", input.display()))?;
    let output = command.arg(&input).output().with_context(|| format!("running {command:?}"))?;
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) if lines.is_empty() => Ok(lines),
        // Exit 1 with error lines is a verdict; exit 1 without any is a crash (e.g. an uncaught exception).
        Some(1) if !lines.is_empty() => Ok(lines),
        _ => bail!("{command:?} failed ({}):\n{}{stderr}", output.status, lines.join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Validates `object` alone (after making sure the npm packages are installed).
    fn check(object: serde_json::Value) -> anyhow::Result<Vec<String>> {
        ensure_tools()?;
        validate(&[Rendered { source: "test".to_owned(), object }])
    }

    fn deployment() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "api", "namespace": "pay", "labels": { "app": "api" } },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "app": "api" } },
                "template": {
                    "metadata": { "labels": { "app": "api" } },
                    "spec": { "containers": [{ "name": "api", "image": "api:1", "ports": [{ "containerPort": 8080 }] }] }
                }
            }
        })
    }

    fn external_secret() -> serde_json::Value {
        json!({
            "apiVersion": "external-secrets.io/v1",
            "kind": "ExternalSecret",
            "metadata": { "name": "db", "namespace": "pay", "labels": { "app": "api" } },
            "spec": {
                "refreshInterval": "1h",
                "secretStoreRef": { "kind": "ClusterSecretStore", "name": "aws" },
                "target": { "name": "db", "creationPolicy": "Owner" },
                "data": [{ "secretKey": "url", "remoteRef": { "key": "prod/db", "property": "url" } }]
            }
        })
    }

    #[test]
    fn builtin_groups() {
        assert!(is_builtin("v1"));
        assert!(is_builtin("apps/v1"));
        assert!(is_builtin("networking.k8s.io/v1"));
        assert!(!is_builtin("external-secrets.io/v1"));
        assert!(!is_builtin("argoproj.io/v1alpha1"));
    }

    #[test]
    fn valid_deployment_passes() {
        assert_eq!(check(deployment()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn misspelt_deployment_field_fails() {
        let mut object = deployment();
        object["spec"]["replica"] = json!(2);
        let errors = check(object).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("test: Deployment pay/api: /spec: "), "{errors:?}");
        assert!(errors[0].contains("'replica'"), "{errors:?}");
    }

    #[test]
    fn unknown_builtin_kind_fails() {
        let errors = check(json!({ "apiVersion": "apps/v1", "kind": "Gizmo", "metadata": { "name": "g" } })).unwrap();
        assert_eq!(errors, ["test: Gizmo g: /: no schema for apps/v1 Gizmo"]);
    }

    #[test]
    fn valid_external_secret_passes() {
        assert_eq!(check(external_secret()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn misspelt_external_secret_field_fails() {
        let mut object = external_secret();
        object["spec"]["refreshIntervall"] = object["spec"]["refreshInterval"].take();
        object["spec"].as_object_mut().unwrap().remove("refreshInterval");
        object["spec"]["target"]["creationPolicyy"] = json!("Owner");
        let errors = check(object).unwrap();
        assert_eq!(
            errors,
            [
                "test: ExternalSecret pay/db: /spec/refreshIntervall: unknown field",
                "test: ExternalSecret pay/db: /spec/target/creationPolicyy: unknown field",
            ]
        );
    }

    #[test]
    fn wrong_type_in_external_secret_fails() {
        let mut object = external_secret();
        object["spec"]["target"]["creationPolicy"] = json!("Sometimes");
        let errors = check(object).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("test: ExternalSecret pay/db: /spec/target/creationPolicy: "), "{errors:?}");
    }

    #[test]
    fn unknown_custom_kind_fails() {
        let errors =
            check(json!({ "apiVersion": "example.com/v1", "kind": "Widget", "metadata": { "name": "w" } })).unwrap();
        assert_eq!(errors, ["test: Widget w: /: no schema for example.com/v1 Widget"]);
    }

    #[test]
    fn valid_custom_resources_pass() {
        let objects = [
            json!({
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": { "name": "api", "namespace": "pay" },
                "spec": {
                    "selector": { "matchLabels": { "app": "api" } },
                    "endpoints": [{ "port": "metrics", "path": "/metrics", "interval": "30s" }]
                }
            }),
            json!({
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": { "name": "api", "namespace": "pay" },
                "spec": { "groups": [{ "name": "api", "rules": [{
                    "alert": "ApiDown",
                    "expr": "up{job=\"api\"} == 0",
                    "for": "5m",
                    "labels": { "severity": "page" },
                    "annotations": { "summary": "api is down" }
                }] }] }
            }),
            json!({
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Application",
                "metadata": { "name": "api", "namespace": "argocd" },
                "spec": {
                    "project": "payments",
                    "source": {
                        "repoURL": "https://example.com/repo.git",
                        "path": "charts/api",
                        "targetRevision": "main",
                        "helm": { "valuesObject": { "anything": 1, "nested": { "free": ["form"] } } }
                    },
                    "destination": { "server": "https://kubernetes.default.svc", "namespace": "pay" },
                    "syncPolicy": { "automated": { "prune": true, "selfHeal": true }, "syncOptions": ["CreateNamespace=true"] }
                }
            }),
            json!({
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "ApplicationSet",
                "metadata": { "name": "apps", "namespace": "argocd" },
                "spec": {
                    "generators": [{ "git": {
                        "repoURL": "https://example.com/repo.git",
                        "revision": "main",
                        "directories": [{ "path": "environments/*/*" }]
                    } }],
                    "template": {
                        "metadata": { "name": "{{path.basename}}" },
                        "spec": {
                            "project": "payments",
                            "source": { "repoURL": "https://example.com/repo.git", "path": "{{path}}", "targetRevision": "main" },
                            "destination": { "server": "https://kubernetes.default.svc", "namespace": "{{path.basename}}" }
                        }
                    }
                }
            }),
            json!({
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "AppProject",
                "metadata": { "name": "payments", "namespace": "argocd" },
                "spec": {
                    "sourceRepos": ["https://example.com/repo.git"],
                    "destinations": [{ "server": "https://kubernetes.default.svc", "namespace": "pay" }],
                    "clusterResourceWhitelist": [{ "group": "", "kind": "Namespace" }]
                }
            }),
        ];
        for object in objects {
            let kind = object["kind"].clone();
            assert_eq!(check(object).unwrap(), Vec::<String>::new(), "{kind}");
        }
    }

    #[test]
    fn misspelt_application_field_fails_but_helm_values_stay_open() {
        let errors = check(json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": { "name": "api", "namespace": "argocd" },
            "spec": {
                "project": "payments",
                "source": { "repoURL": "https://example.com/repo.git", "path": "x", "helm": { "valuesObject": { "x": 1 } } },
                "destination": { "server": "https://kubernetes.default.svc", "namespace": "pay" },
                "syncPolicy": { "automated": { "prune": true, "selfHeel": true } }
            }
        }))
        .unwrap();
        assert_eq!(errors, ["test: Application argocd/api: /spec/syncPolicy/automated/selfHeel: unknown field"]);
    }
}
