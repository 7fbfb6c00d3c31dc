//! Strict schema validation of rendered objects with jsonschema (crates/xtask/schemas/validate.py): built-in
//! kinds against kubernetes-validate's schemas, custom resources against their CRDs' own `openAPIV3Schema`;
//! unknown fields and unknown kinds are errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use super::Rendered;

/// The Kubernetes version whose built-in schemas we validate against: one that EKS offers in standard support.
/// 1.35: on EKS since January 2026, in standard support until 2027-03-27 (endoflife.date/amazon-eks); the EKS
/// user guide's release calendar (versioning/kubernetes-versions.adoc) ends 1.33's on 2026-07-29 and 1.34's
/// on 2026-12-02. kubernetes-validate 1.37.0 ships schemas up to 1.37 (its kubernetes-json-schema/ data).
pub const KUBERNETES_VERSION: &str = "1.35";

/// Overrides where the upstream CRD files are (default: `shared/schemas` beside the repository).
pub const CRDS_VARIABLE: &str = "QUILLA_UPSTREAM_CRDS";

/// The directory of upstream CustomResourceDefinition files (Chaos Mesh, Crossplane: unmodified copies,
/// each folder's SOURCE.md naming its tag and commit) that custom resources are validated against:
/// `$QUILLA_UPSTREAM_CRDS`, or `../shared/schemas` from the workspace root, where CI lays shared/.
pub fn upstream_crds() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os(CRDS_VARIABLE) {
        Some(dir) => PathBuf::from(dir),
        None => crate::workspace_root().join("../shared/schemas"),
    };
    ensure!(dir.is_dir(), "no upstream CRD files at {} (set {CRDS_VARIABLE} to their directory)", dir.display());
    Ok(dir)
}

/// crates/xtask/schemas: the validator scripts and the npm packages.
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

/// Validates every object strictly, custom resources against the CRD files under `crds`; returns one line
/// per error (`<source>: <Kind> <ns/name>: <pointer>: <message>`). An empty list means every object is
/// valid; a tool that cannot run is an `Err`.
///
/// The kinds of Argo CD, External Secrets, cert-manager and the Prometheus operator have no CRD file
/// there yet: validate.py hands them on (`--defer-unknown`) to validate-crds.mjs and the
/// @kubernetes-models validators, until their upstream CRDs join the directory.
pub fn validate(objects: &[Rendered], crds: &Path) -> anyhow::Result<Vec<String>> {
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    let dir = schemas_dir();
    let scratch = platform::testkit::TempDir::try_new("validate")?;
    let deferred = scratch.path().join("deferred.json");
    let mut python = Command::new("python3");
    // -B: no __pycache__ written into the source tree.
    python
        .arg("-B")
        .arg(dir.join("validate.py"))
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--crds"])
        .arg(crds)
        .arg("--defer-unknown")
        .arg(&deferred);
    let mut errors = run_validator(python, &scratch.path().join("objects.json"), &to_items(objects))?;
    let text = std::fs::read(&deferred).with_context(|| format!("read {}", deferred.display()))?;
    let rest: Vec<serde_json::Value> = serde_json::from_slice(&text).context("validate.py's deferred objects")?;
    if !rest.is_empty() {
        let mut node = Command::new("node");
        node.arg(dir.join("validate-crds.mjs"));
        errors.extend(run_validator(node, &scratch.path().join("rest.json"), &rest)?);
    }
    Ok(errors)
}

/// The objects as the validators read them: `[{"source": …, "object": …}]`.
fn to_items(objects: &[Rendered]) -> Vec<serde_json::Value> {
    objects.iter().map(|r| serde_json::json!({ "source": r.source, "object": r.object })).collect()
}

/// Runs one validator script on `items` (written to `input`, passed as the last argument).
fn run_validator(mut command: Command, input: &Path, items: &[serde_json::Value]) -> anyhow::Result<Vec<String>> {
    std::fs::write(input, serde_json::to_vec(items)?).with_context(|| format!("writing {}", input.display()))?;
    let output = command.arg(input).output().with_context(|| format!("running {command:?}"))?;
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

    /// Validates `object` alone against the upstream CRDs (after making sure the npm packages are installed).
    fn check(object: serde_json::Value) -> anyhow::Result<Vec<String>> {
        ensure_tools()?;
        validate(&[Rendered { source: "test".to_owned(), object }], &upstream_crds()?)
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

    fn pod_chaos() -> serde_json::Value {
        json!({
            "apiVersion": "chaos-mesh.org/v1alpha1",
            "kind": "PodChaos",
            "metadata": { "name": "kill", "namespace": "quilla", "annotations": { "quilla.io/alert": "A" } },
            "spec": {
                "action": "pod-kill",
                "mode": "one",
                "gracePeriod": 0,
                "selector": { "namespaces": ["quilla"], "labelSelectors": { "app.kubernetes.io/name": "api" } }
            }
        })
    }

    #[test]
    fn a_valid_chaos_experiment_passes_its_upstream_crd() {
        assert_eq!(check(pod_chaos()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn an_unknown_field_in_a_chaos_experiment_fails() {
        let mut object = pod_chaos();
        object["spec"]["selector"]["labelSelector"] = json!({ "app": "api" });
        object["metadata"]["labelz"] = json!({});
        let errors = check(object).unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("test: PodChaos quilla/kill: /metadata: "), "{errors:?}");
        assert!(errors[0].contains("'labelz' was unexpected"), "{errors:?}");
        assert!(errors[1].starts_with("test: PodChaos quilla/kill: /spec/selector: "), "{errors:?}");
        assert!(errors[1].contains("'labelSelector' was unexpected"), "{errors:?}");
    }

    #[test]
    fn a_wrong_type_or_value_in_a_chaos_experiment_fails() {
        let mut object = pod_chaos();
        object["spec"]["gracePeriod"] = json!("soon");
        object["spec"]["action"] = json!("pod-explode");
        let errors = check(object).unwrap();
        assert_eq!(
            errors,
            [
                "test: PodChaos quilla/kill: /spec/action: 'pod-explode' is not one of ['pod-kill', 'pod-failure', 'container-kill']",
                "test: PodChaos quilla/kill: /spec/gracePeriod: 'soon' is not of type 'integer'",
            ]
        );
    }

    /// A CRD of kind Gadget (group example.com) whose `spec.values` keeps unknown fields, in a scratch directory.
    fn gadget_crds() -> platform::testkit::TempDir {
        let scratch = platform::testkit::TempDir::try_new("crds").expect("scratch");
        let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.example.com\n\
                   spec:\n  group: example.com\n  names: {kind: Gadget, plural: gadgets}\n  scope: Namespaced\n  versions:\n\
                   \x20   - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema:\n\
                   \x20         type: object\n          properties:\n            apiVersion: {type: string}\n\
                   \x20           kind: {type: string}\n            metadata: {type: object}\n            spec:\n\
                   \x20             type: object\n              properties:\n\
                   \x20               values: {type: object, x-kubernetes-preserve-unknown-fields: true, properties: {size: {type: integer}}}\n\
                   \x20               port: {x-kubernetes-int-or-string: true, anyOf: [{type: integer}, {type: string}]}\n\
                   \x20               note: {type: string, nullable: true}\n\
                   \x20               empty: {type: object}\n\
                   \x20               template: {type: object, x-kubernetes-embedded-resource: true, properties: {spec: {type: object}}}\n";
        std::fs::write(scratch.path().join("example.com_gadgets.yaml"), crd).expect("write CRD");
        scratch
    }

    #[test]
    fn a_crd_schema_is_closed_except_where_it_preserves_unknown_fields() {
        let crds = gadget_crds();
        let gadget = |spec: serde_json::Value| {
            let object =
                json!({ "apiVersion": "example.com/v1", "kind": "Gadget", "metadata": { "name": "g" }, "spec": spec });
            validate(&[Rendered { source: "test".to_owned(), object }], crds.path()).unwrap()
        };
        let valid = json!({ "values": { "size": 1, "free": { "form": [1] } }, "port": "http", "note": null,
            "empty": {}, "template": { "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" }, "spec": {} } });
        assert_eq!(gadget(valid), Vec::<String>::new());
        assert_eq!(gadget(json!({ "port": 8080 })), Vec::<String>::new());
        // Declared fields are still checked inside a node that keeps unknown ones.
        let errors = gadget(json!({ "values": { "size": "big" } }));
        assert_eq!(errors, ["test: Gadget g: /spec/values/size: 'big' is not of type 'integer'"]);
        // An object with no declared fields keeps none (the API server would prune them).
        let errors = gadget(json!({ "empty": { "x": 1 } }));
        assert!(errors.len() == 1 && errors[0].contains("/spec/empty: ") && errors[0].contains("'x'"), "{errors:?}");
        let errors = gadget(json!({ "port": 1.5, "spare": true }));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("test: Gadget g: /spec: ") && errors[0].contains("'spare'"), "{errors:?}");
        assert!(errors[1].starts_with("test: Gadget g: /spec/port: "), "{errors:?}");
        // An embedded resource's metadata and the root's are ObjectMeta, strictly.
        let errors = gadget(json!({ "template": { "metadata": { "nmae": "p" } } }));
        assert!(errors.len() == 1 && errors[0].contains("/spec/template/metadata: "), "{errors:?}");
        // A kind whose group has no CRD there is refused.
        let other = json!({ "apiVersion": "example.com/v2", "kind": "Gadget", "metadata": { "name": "g" } });
        let errors = validate(&[Rendered { source: "test".to_owned(), object: other }], crds.path()).unwrap();
        assert_eq!(errors, ["test: Gadget g: /: no schema for example.com/v2 Gadget"]);
    }
}
