//! `cargo xtask pods`: every Deployment of every environment started the way the kubelet starts it,
//! from its own image, and the objects that route to it checked against what it really listens on.
//!
//! For each container: the image layout (from `cargo xtask images`) unpacked as its root file
//! system, mounted read-only; the image's `Env` overlaid by the container's `env` and the
//! Services' link variables; each ConfigMap and Secret volume written at its mount path with the
//! pod's `fsGroup` and `defaultMode`, only its `items` when it lists some (Secrets filled from what produces them: an ExternalSecret's
//! template rendered over test values that point at a throwaway TLS PostgreSQL and Redis, or a
//! cert-manager Certificate issued by a throwaway CA for its `dnsNames`); `/proc`, `/dev` and the
//! kubelet's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`; the process started as the
//! pod's user (PID as the container runtime would have it: the entrypoint itself). Then it must:
//! stay up; listen on every declared `containerPort` and on no other port; pass its startup,
//! liveness and readiness probes (path, port and scheme as declared, within the declared budget);
//! present a certificate valid for its Service's name; pass the image's own health check; and
//! stop on SIGTERM within `terminationGracePeriodSeconds`, exiting 0.
//!
//! Without starting anything: every Service `targetPort` resolves to a port its pods declare,
//! and every call a service's configuration makes to another Service (a URL naming it) is allowed
//! by both NetworkPolicies on the port the callee's pod listens on, with a certificate name the
//! callee's Certificate covers.
//!
//! Then the same run on a copy of the tree whose notification-service declares a wrong admin
//! port must fail, naming the container, the port and the probe — so the check itself is checked.
//! Root is needed (mount namespace, chroot, switching user), as for `images --check`.

mod fixtures;
mod graph;
mod kubelet;
mod template;

use std::path::Path;

use anyhow::{Result, bail, ensure};
use platform::testkit::TempDir;
use serde_json::Value;

use crate::args::{ImagesArgs, PodsArgs};
use crate::infra::is_root;
use crate::validate::{self, Rendered};

pub use kubelet::exec_in_pod;

pub fn run(args: &PodsArgs) -> Result<()> {
    ensure!(is_root(), "cargo xtask pods needs root (mount namespace, chroot, the pod's user)");
    crate::prereqs::ensure(crate::prereqs::Needs { python_tools: true, wrk: false, nix: false, gitops: true })?;
    let layouts = match &args.layouts {
        Some(dir) => dir.clone(),
        None => {
            let dir = crate::images::images_dir();
            if !dir.join(crate::services::SERVICES[0].name).join("index.json").is_file() {
                crate::images::run(&ImagesArgs::default())?;
            }
            dir
        }
    };
    let fixtures = fixtures::Fixtures::start()?;
    let root = crate::workspace_root();
    let only = args.environment.as_deref();
    let failures = check_tree(&root, &layouts, &fixtures, only, None)?;
    if !failures.is_empty() {
        bail!("{} pod-start problems:\n  {}", failures.len(), failures.join("\n  "));
    }
    println!("xtask: every pod starts from its image, listens where it is declared, and passes its probes");
    if !args.no_self_check {
        self_check(&root, &layouts, &fixtures)?;
    }
    Ok(())
}

/// Every problem found for the environments under `root` (all, or `only`); `deployment` limits the
/// pods started to that one.
fn check_tree(
    root: &Path,
    layouts: &Path,
    fixtures: &fixtures::Fixtures,
    only: Option<&str>,
    deployment: Option<&str>,
) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    let mut started_pods = 0;
    for dir in environment_dirs(root)? {
        if only.is_some_and(|only| !dir.ends_with(only)) {
            continue;
        }
        let objects = validate::render(root, &dir)?;
        let cluster = graph::Cluster::new(&objects);
        failures.extend(cluster.check_routing().into_iter().map(|p| format!("{dir}: {p}")));
        // Sync hooks (the migrations) run before the Deployments roll out, as Argo CD orders them.
        for job in cluster.jobs() {
            let name = job.object["metadata"]["name"].as_str().unwrap_or_default();
            if deployment.is_some() {
                continue;
            }
            match kubelet::run_job(job, &cluster, layouts, fixtures) {
                Ok(problems) if problems.is_empty() => println!("xtask: ok  {dir}: job {name} completed"),
                Ok(problems) => failures.extend(problems.into_iter().map(|p| format!("{dir}: {p}"))),
                Err(error) => failures.push(format!("{dir}: Job {name}: {error:#}")),
            }
        }
        for pod in cluster.deployments() {
            let name = pod.object["metadata"]["name"].as_str().unwrap_or_default();
            if deployment.is_some_and(|only| only != name) {
                continue;
            }
            started_pods += 1;
            let started = std::time::Instant::now();
            match kubelet::start_and_check(pod, &cluster, layouts, fixtures) {
                Ok(problems) if problems.is_empty() => {
                    println!("xtask: ok  {dir}: pod {name} ({:.1?})", started.elapsed());
                }
                Ok(problems) => failures.extend(problems.into_iter().map(|p| format!("{dir}: {p}"))),
                Err(error) => failures.push(format!("{dir}: Deployment {name}: {error:#}")),
            }
        }
    }
    ensure!(started_pods > 0, "no Deployment matched (environment {only:?}, deployment {deployment:?})");
    Ok(failures)
}

/// `environments/<region>/<stage>` directories, relative to `root`, sorted.
fn environment_dirs(root: &Path) -> Result<Vec<String>> {
    let mut dirs = Vec::new();
    for region in validate::sorted_entries(&root.join("environments"), Path::is_dir)? {
        for stage in validate::sorted_entries(&region, Path::is_dir)? {
            if stage.join("kustomization.yaml").is_file() {
                dirs.push(stage.strip_prefix(root).unwrap_or(&stage).to_string_lossy().into_owned());
            }
        }
    }
    ensure!(!dirs.is_empty(), "no environments under {}", root.display());
    Ok(dirs)
}

/// A copy of the tree where notification-service declares its admin port as 9091 while its image
/// listens on 9090: the run must fail and say which container, port and probe.
fn self_check(root: &Path, layouts: &Path, fixtures: &fixtures::Fixtures) -> Result<()> {
    let copy = TempDir::try_new("pods-broken-tree")?;
    for part in ["gitops", "environments"] {
        crate::infra::run(std::process::Command::new("cp").arg("-a").arg(root.join(part)).arg(copy.path()))?;
    }
    let kustomization = copy.path().join("gitops/apps/notification-service/kustomization.yaml");
    let mut text = std::fs::read_to_string(&kustomization)?;
    text.push_str(
        "patches:\n  - target: {kind: Deployment, name: notification-service}\n    patch: |-\n      \
         - {op: replace, path: /spec/template/spec/containers/0/ports/1/containerPort, value: 9091}\n",
    );
    std::fs::write(&kustomization, text)?;
    let failures =
        check_tree(copy.path(), layouts, fixtures, Some("environments/spain/dev"), Some("notification-service"))?;
    let report = failures.join("\n");
    let named = |needle: &str| report.contains(needle);
    ensure!(
        named("container notification-service") && named("9091") && named("startupProbe"),
        "the pod-start check did not catch a wrong containerPort (expected the container, port 9091 and the \
         startupProbe named), it reported:\n{report}"
    );
    println!("xtask: ok  a wrong containerPort is caught:\n    {}", failures.join("\n    "));
    Ok(())
}

/// The container image's service name: the last path segment of `image`, without tag or digest.
fn image_service(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// `labels` (a JSON object) has every pair of `selector` (a `matchLabels` object).
fn matches_labels(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|pairs| pairs.iter().all(|(key, value)| labels.get(key) == Some(value)))
}

/// `Kind/name` of a rendered object, for messages.
fn describe(rendered: &Rendered) -> String {
    format!(
        "{} {}",
        rendered.object["kind"].as_str().unwrap_or("?"),
        rendered.object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_map_to_services_with_or_without_registry_tag_and_digest() {
        assert_eq!(image_service("quilla/transaction-api"), "transaction-api");
        assert_eq!(
            image_service("111111111111.dkr.ecr.eu-south-2.amazonaws.com/quilla/notification-service@sha256:00"),
            "notification-service"
        );
        assert_eq!(image_service("registry:5000/quilla/x:1.2"), "x");
    }
}
