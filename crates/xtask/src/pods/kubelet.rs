//! Starts one Deployment's pod the way the kubelet and a container runtime would, and checks it.
//!
//! The process runs in a private mount namespace (`unshare --mount`): the unpacked image bind-
//! mounted on itself and remounted read-only when `readOnlyRootFilesystem` says so, a fresh
//! `/proc`, a `/dev` holding only what runtimes provide (null, zero, full, random, urandom, tty,
//! shm), tmpfs for `emptyDir` volumes; then `chroot --userspec` as the pod's user and groups, so
//! the entrypoint is exactly the process we signal. It shares the host's network namespace, so
//! pods start one at a time and their ports must be free here. Not emulated: the kubelet's
//! symlinked atomic writes of volume files (files are written in place), PID and network
//! namespaces, cgroup limits.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use platform::testkit::TempDir;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fixtures::Fixtures;
use super::graph::{Cluster, container_port};
use super::{image_service, template};
use crate::images::Unpacked;
use crate::validate::Rendered;

/// What `cargo xtask pod-exec` needs to start the container inside its mount namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExecSpec {
    root: PathBuf,
    user: u32,
    group: u32,
    groups: Vec<u32>,
    env: Vec<(String, String)>,
    argv: Vec<String>,
    read_only_root: bool,
    /// Absolute paths inside the root that get a writable tmpfs (`emptyDir`).
    writable: Vec<String>,
}

/// A probe as the Deployment declares it.
#[derive(Debug)]
struct Probe {
    kind: &'static str,
    scheme: String,
    port: u16,
    path: String,
    period: Duration,
    timeout: Duration,
    budget: Duration,
}

/// The started container: its process, log files and where it lives.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n      ")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A workload's pod laid out on disk, ready to start.
struct Prepared {
    scratch: TempDir,
    exec: ExecSpec,
    /// The container's declared ports: (name, number).
    declared: Vec<(String, u16)>,
    who: String,
    /// The xtask executable that runs `pod-exec`.
    exe: PathBuf,
}

/// Unpacks the image and writes everything the kubelet would give `workload`'s pod (a Deployment's
/// or a Job's template).
fn prepare(workload: &Rendered, cluster: &Cluster<'_>, layouts: &Path, fixtures: &Fixtures) -> Result<Prepared> {
    let kind = workload.object["kind"].as_str().unwrap_or_default();
    let name = workload.object["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = workload.object["metadata"]["namespace"].as_str().unwrap_or("default");
    let pod = &workload.object["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().context("no containers")?;
    ensure!(containers.len() == 1 && pod["initContainers"].is_null(), "only single-container pods are supported here");
    let container = &containers[0];
    let who = format!("{kind} {name}, container {}", container["name"].as_str().unwrap_or_default());
    let image = container["image"].as_str().context("container without image")?;
    let layout = layouts.join(image_service(image));
    ensure!(layout.join("index.json").is_file(), "{who}: no image layout for {image} in {}", layouts.display());

    let scratch = TempDir::try_new(&format!("pod-{name}"))?;
    let root = scratch.path().join("rootfs");
    std::fs::create_dir_all(&root)?;
    let Unpacked { config: image_config, .. } = crate::images::unpack(&layout, &root)?;
    crate::infra::run(Command::new("chmod").arg("0755").arg(&root))?;

    let security =
        |key: &str| container["securityContext"][key].as_u64().or_else(|| pod["securityContext"][key].as_u64());
    let image_user = image_config["User"].as_str().unwrap_or_default();
    let (image_uid, image_gid) = image_user.split_once(':').unwrap_or((image_user, "0"));
    let user =
        security("runAsUser").map_or_else(|| image_uid.parse().context("image User"), |u| Ok(u32::try_from(u)?))?;
    let group =
        security("runAsGroup").map_or_else(|| image_gid.parse().context("image User"), |g| Ok(u32::try_from(g)?))?;
    let fs_group = pod["securityContext"]["fsGroup"].as_u64().map(u32::try_from).transpose()?;
    // The kubelet refuses to start a container that must run as non-root but would run as root.
    let non_root = if container["securityContext"]["runAsNonRoot"].is_boolean() {
        container["securityContext"]["runAsNonRoot"] == true
    } else {
        pod["securityContext"]["runAsNonRoot"] == true
    };
    ensure!(!(non_root && user == 0), "{who}: runAsNonRoot is set but the container would run as UID 0");
    let mut groups = vec![group];
    groups.extend(fs_group);
    for extra in pod["securityContext"]["supplementalGroups"].as_array().into_iter().flatten() {
        groups.push(u32::try_from(extra.as_u64().context("supplementalGroups")?)?);
    }

    let writable = write_volumes(&root, pod, container, cluster, fixtures, fs_group).with_context(|| who.clone())?;
    write_kubelet_files(&root, name, namespace)?;
    let env = environment(&image_config, container, cluster, pod, name, namespace).with_context(|| who.clone())?;
    let argv = command_line(&image_config, container)?;
    let declared: Vec<(String, u16)> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((p["name"].as_str().unwrap_or("").to_owned(), u16::try_from(p["containerPort"].as_u64()?).ok()?))
        })
        .collect();
    let exec = ExecSpec {
        root,
        user,
        group,
        groups,
        env,
        argv,
        read_only_root: container["securityContext"]["readOnlyRootFilesystem"] == true,
        writable,
    };
    Ok(Prepared { scratch, exec, declared, who, exe: fixtures.exe().to_path_buf() })
}

impl Prepared {
    /// Starts the container's own command; `label` names its spec and log files.
    fn start(&self, label: &str) -> Result<Running> {
        self.start_command(label, &self.exec.argv)
    }

    /// Starts `argv` in the same pod (root, mounts, user, environment).
    fn start_command(&self, label: &str, argv: &[String]) -> Result<Running> {
        let exec = ExecSpec { argv: argv.to_vec(), ..self.exec.clone() };
        let exec_file = self.scratch.path().join(format!("{label}.json"));
        std::fs::write(&exec_file, serde_json::to_vec(&exec)?)?;
        spawn_in_pod(&self.exe, &exec_file, &self.scratch.path().join(format!("{label}.log")))
    }
}

/// Runs a Job's pod to completion, as Argo CD's Sync hook would before the Deployments: it must
/// exit 0 within `activeDeadlineSeconds` (five minutes at most here).
pub fn run_job(job: &Rendered, cluster: &Cluster<'_>, layouts: &Path, fixtures: &Fixtures) -> Result<Vec<String>> {
    let prepared = prepare(job, cluster, layouts, fixtures)?;
    let deadline = Duration::from_secs(job.object["spec"]["activeDeadlineSeconds"].as_u64().unwrap_or(300).min(300));
    let mut running = prepared.start("job")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = running.exited() {
            break Some(status);
        }
        if started.elapsed() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let who = &prepared.who;
    Ok(match status {
        Some(status) if status.success() => Vec::new(),
        Some(status) => vec![format!("{who}: exited with {status}:\n      {}", running.log_tail())],
        None => vec![format!(
            "{who}: still running after activeDeadlineSeconds ({deadline:?}):\n      {}",
            running.log_tail()
        )],
    })
}

/// Starts `deployment`'s pod and returns every problem found (empty: the pod behaves).
pub fn start_and_check(
    deployment: &Rendered,
    cluster: &Cluster<'_>,
    layouts: &Path,
    fixtures: &Fixtures,
) -> Result<Vec<String>> {
    let prepared = prepare(deployment, cluster, layouts, fixtures)?;
    let Prepared { who, declared, .. } = &prepared;
    let container = &deployment.object["spec"]["template"]["spec"]["containers"][0];
    for (_, port) in declared {
        ensure!(
            std::net::TcpListener::bind(("0.0.0.0", *port)).is_ok(),
            "port {port} is in use on this machine; the pods need it free"
        );
    }
    let probes = probes(container).with_context(|| who.clone())?;
    let mut running = prepared.start("container")?;
    let mut problems = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        probe_all(who, &probes, &mut running, &mut problems).await;
        if problems.is_empty() {
            check_listening(who, &running, declared, &mut problems);
            check_certificates(who, deployment, cluster, declared, fixtures, &mut problems).await;
        }
    });
    if problems.is_empty() {
        let image =
            deployment.object["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or_default();
        check_image_healthcheck(who, image_service(image), &prepared, &mut problems)?;
    }
    let grace = Duration::from_secs(
        deployment.object["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
    );
    stop(who, &mut running, grace, &mut problems)?;
    if !problems.is_empty() {
        problems.push(format!("{who}: its output ended with:\n      {}", running.log_tail()));
    }
    Ok(problems)
}

/// Writes every mounted volume's files into the root; returns the `emptyDir` mount paths.
fn write_volumes(
    root: &Path,
    pod: &Value,
    container: &Value,
    cluster: &Cluster<'_>,
    fixtures: &Fixtures,
    fs_group: Option<u32>,
) -> Result<Vec<String>> {
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mut writable = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().context("volumeMount without name")?;
        let path = mount["mountPath"].as_str().context("volumeMount without mountPath")?;
        ensure!(mount["subPath"].is_null(), "volumeMount {name}: subPath is not supported here");
        let volume = volumes.iter().find(|v| v["name"] == name).with_context(|| format!("no volume {name}"))?;
        let (files, mode) = if let Some(config_map) = volume["configMap"]["name"].as_str() {
            let object = cluster.find("ConfigMap", config_map).with_context(|| format!("no ConfigMap {config_map}"))?;
            let data = object.object["data"].as_object().cloned().unwrap_or_default();
            let files = data.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned())).collect();
            (files, volume["configMap"]["defaultMode"].as_u64().unwrap_or(0o644))
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            (secret_files(secret, cluster, fixtures)?, volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644))
        } else if volume.get("emptyDir").is_some() {
            writable.push(path.to_owned());
            continue;
        } else {
            bail!("volume {name}: only configMap, secret and emptyDir volumes are supported here");
        };
        let source = if volume["configMap"].is_object() { &volume["configMap"] } else { &volume["secret"] };
        let files = project(files, source, mode).with_context(|| format!("volume {name}"))?;
        let target = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&target)?;
        for (file, contents, mode) in files {
            let file_path = target.join(&file);
            if let Some(dir) = file_path.parent().filter(|dir| *dir != target) {
                std::fs::create_dir_all(dir)?;
                set_owner_and_mode(dir, fs_group, 0o755)?;
            }
            std::fs::write(&file_path, contents)?;
            set_owner_and_mode(&file_path, fs_group, mode)?;
        }
        set_owner_and_mode(&target, fs_group, 0o755)?;
    }
    Ok(writable)
}

/// The files a ConfigMap or Secret volume shows, with their modes: every key of `data` under its
/// own name, or with `items` only those keys, each at its `path` with its `mode` (else `mode`), as
/// the kubelet projects them. A listed key that is not there fails the mount unless `optional`.
fn project(data: BTreeMap<String, String>, source: &Value, mode: u64) -> Result<Vec<(String, String, u64)>> {
    let Some(items) = source["items"].as_array() else {
        return Ok(data.into_iter().map(|(key, contents)| (key, contents, mode)).collect());
    };
    let mut files = Vec::new();
    for item in items {
        let key = item["key"].as_str().context("an item without key")?;
        let path = item["path"].as_str().context("an item without path")?;
        ensure!(
            !path.starts_with('/') && !path.split('/').any(|part| part.is_empty() || part == ".."),
            "item path `{path}` must be relative and without `..`"
        );
        match data.get(key) {
            Some(contents) => files.push((path.to_owned(), contents.clone(), item["mode"].as_u64().unwrap_or(mode))),
            None if source["optional"] == true => {}
            None => bail!("item key `{key}` is not in the object"),
        }
    }
    Ok(files)
}

/// The files of Secret `name`, from what would write it in the cluster.
fn secret_files(name: &str, cluster: &Cluster<'_>, fixtures: &Fixtures) -> Result<BTreeMap<String, String>> {
    if let Some(external) = cluster.external_secret_for(name) {
        let values = fixtures.secret_values(&external.object)?;
        let templates = external.object["spec"]["target"]["template"]["data"].as_object().cloned().unwrap_or_default();
        if templates.is_empty() {
            // No template: each `data` entry's remote value lands under its secretKey.
            ensure!(
                external.object["spec"]["dataFrom"].is_null(),
                "ExternalSecret for {name}: dataFrom without a template"
            );
            return external.object["spec"]["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|entry| {
                    let key = entry["secretKey"].as_str().context("data entry without secretKey")?;
                    let value = values
                        .get(key)
                        .with_context(|| format!("ExternalSecret for {name}: no test value for {key}"))?;
                    Ok((key.to_owned(), value.clone()))
                })
                .collect();
        }
        return templates
            .into_iter()
            .map(|(key, text)| {
                let rendered = template::render(text.as_str().unwrap_or_default(), &values)
                    .with_context(|| format!("ExternalSecret for Secret {name}, key {key}"))?;
                Ok((key, rendered))
            })
            .collect();
    }
    if let Some(certificate) = cluster.certificate_for(name) {
        let names: Vec<String> = certificate.object["spec"]["dnsNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        ensure!(!names.is_empty(), "Certificate for Secret {name} has no dnsNames");
        let (certificate, key) = fixtures.issue(&names)?;
        return Ok(BTreeMap::from([
            ("tls.crt".to_owned(), certificate),
            ("tls.key".to_owned(), key),
            ("ca.crt".to_owned(), fixtures.ca_pem()),
        ]));
    }
    bail!("nothing in this environment writes the Secret {name} (no ExternalSecret or Certificate targets it)")
}

fn set_owner_and_mode(path: &Path, group: Option<u32>, mode: u64) -> Result<()> {
    crate::infra::run(Command::new("chown").arg(format!("0:{}", group.unwrap_or(0))).arg(path))?;
    crate::infra::run(Command::new("chmod").arg(format!("{mode:o}")).arg(path))
}

/// /etc/hosts, /etc/resolv.conf and /etc/hostname as the kubelet writes them for a pod.
fn write_kubelet_files(root: &Path, pod: &str, namespace: &str) -> Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(etc.join("hostname"), format!("{pod}\n"))?;
    std::fs::write(
        etc.join("hosts"),
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.0.1\t{pod}\n"),
    )?;
    // Nothing answers DNS here: lookups of cluster names fail fast, as with a broken CoreDNS.
    std::fs::write(
        etc.join("resolv.conf"),
        format!(
            "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5\n"
        ),
    )?;
    for dir in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    Ok(())
}

/// The container's environment: the image's `Env`, the kubelet's service links, then the
/// container's `env` (later entries win, as in Kubernetes).
fn environment(
    image: &Value,
    container: &Value,
    cluster: &Cluster<'_>,
    pod: &Value,
    pod_name: &str,
    namespace: &str,
) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: String, value: String| {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    };
    for entry in image["Env"].as_array().into_iter().flatten() {
        let (key, value) = entry.as_str().and_then(|e| e.split_once('=')).context("image Env entry")?;
        set(key.to_owned(), value.to_owned());
    }
    set("HOSTNAME".to_owned(), pod_name.to_owned());
    set("KUBERNETES_SERVICE_HOST".to_owned(), "10.100.0.1".to_owned());
    set("KUBERNETES_SERVICE_PORT".to_owned(), "443".to_owned());
    if pod["enableServiceLinks"] != false {
        for (index, service) in cluster.services().enumerate() {
            let name = service.object["metadata"]["name"].as_str().unwrap_or_default().to_uppercase().replace('-', "_");
            let address = format!("10.100.1.{}", index + 1);
            let ports = service.object["spec"]["ports"].as_array().cloned().unwrap_or_default();
            for (i, port) in ports.iter().enumerate() {
                let number = port["port"].as_u64().unwrap_or_default();
                if i == 0 {
                    set(format!("{name}_SERVICE_HOST"), address.clone());
                    set(format!("{name}_SERVICE_PORT"), number.to_string());
                    set(format!("{name}_PORT"), format!("tcp://{address}:{number}"));
                }
                if let Some(port_name) = port["name"].as_str() {
                    set(
                        format!("{name}_SERVICE_PORT_{}", port_name.to_uppercase().replace('-', "_")),
                        number.to_string(),
                    );
                }
                let prefix = format!("{name}_PORT_{number}_TCP");
                set(prefix.clone(), format!("tcp://{address}:{number}"));
                set(format!("{prefix}_PROTO"), "tcp".to_owned());
                set(format!("{prefix}_PORT"), number.to_string());
                set(format!("{prefix}_ADDR"), address.clone());
            }
        }
    }
    for entry in container["env"].as_array().into_iter().flatten() {
        let key = entry["name"].as_str().context("env entry without name")?.to_owned();
        let value = if let Some(value) = entry["value"].as_str() {
            value.to_owned()
        } else {
            match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod_name.to_owned(),
                Some("metadata.namespace") => namespace.to_owned(),
                Some("status.podIP") => "127.0.0.1".to_owned(),
                _ => bail!(
                    "env {key}: only values and metadata.name/namespace or status.podIP field refs are supported here"
                ),
            }
        };
        set(key, value);
    }
    Ok(env)
}

/// `command` replaces the image's Entrypoint (and drops its Cmd); `args` replaces Cmd.
fn command_line(image: &Value, container: &Value) -> Result<Vec<String>> {
    let strings = |value: &Value| -> Vec<String> {
        value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
    };
    let (entrypoint, default_args) = if container["command"].is_array() {
        (strings(&container["command"]), Vec::new())
    } else {
        (strings(&image["Entrypoint"]), strings(&image["Cmd"]))
    };
    let args = if container["args"].is_array() { strings(&container["args"]) } else { default_args };
    ensure!(!entrypoint.is_empty(), "neither the container nor the image names a command");
    Ok([entrypoint, args].concat())
}

/// The container's probes with their ports resolved and their time budgets.
fn probes(container: &Value) -> Result<Vec<Probe>> {
    let mut probes = Vec::new();
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let probe = &container[kind];
        if probe.is_null() {
            continue;
        }
        let get = &probe["httpGet"];
        ensure!(get.is_object(), "{kind}: only httpGet probes are supported here");
        let port = container_port_of(container, &get["port"])
            .with_context(|| format!("{kind}: port {} is not a declared containerPort", get["port"]))?;
        let seconds = |key: &str, default: u64| Duration::from_secs(probe[key].as_u64().unwrap_or(default));
        let period = seconds("periodSeconds", 10);
        let failures = u32::try_from(probe["failureThreshold"].as_u64().unwrap_or(3))?;
        let budget = match kind {
            // Readiness has no deadline in Kubernetes; a pod that is not ready in a minute is broken.
            "readinessProbe" => Duration::from_secs(60),
            _ => seconds("initialDelaySeconds", 0) + period * failures,
        };
        probes.push(Probe {
            kind,
            scheme: get["scheme"].as_str().unwrap_or("HTTP").to_lowercase(),
            port,
            path: get["path"].as_str().unwrap_or("/").to_owned(),
            period,
            timeout: seconds("timeoutSeconds", 1),
            budget,
        });
    }
    ensure!(
        probes.iter().any(|p| p.kind == "startupProbe" || p.kind == "livenessProbe"),
        "no liveness or startup probe"
    );
    Ok(probes)
}

/// `port` as a number, or the number of the container port named `port`; for an undeclared
/// numeric port the number itself (the kubelet probes it all the same).
fn container_port_of(container: &Value, port: &Value) -> Option<u16> {
    let wrapped = Rendered {
        source: String::new(),
        object: serde_json::json!({ "spec": { "template": { "spec": { "containers": [container] } } } }),
    };
    container_port(&wrapped, port).or_else(|| port.as_u64().and_then(|p| u16::try_from(p).ok()))
}

/// The startup probe until it passes (or its budget runs out), then liveness once, then
/// readiness until it passes; each wants 200, as the services promise.
async fn probe_all(who: &str, probes: &[Probe], running: &mut Running, problems: &mut Vec<String>) {
    // The kubelet does not verify a probe's certificate, so neither does this client.
    let http = match reqwest::Client::builder().tls_danger_accept_invalid_certs(true).build() {
        Ok(http) => http,
        Err(error) => return problems.push(format!("{who}: cannot build the probe client: {error}")),
    };
    for probe in probes {
        let url = format!("{}://127.0.0.1:{}{}", probe.scheme, probe.port, probe.path);
        let started = Instant::now();
        let mut last = String::from("no answer");
        let passed = loop {
            if let Some(status) = running.exited() {
                problems.push(format!("{who}: exited ({status}) before its {} passed", probe.kind));
                return;
            }
            match http.get(&url).timeout(probe.timeout).send().await {
                Ok(response) if response.status() == 200 => break true,
                Ok(response) => last = format!("answered {}", response.status()),
                Err(error) => last = format!("{:#}", anyhow::Error::new(error)),
            }
            if started.elapsed() >= probe.budget {
                break false;
            }
            tokio::time::sleep(probe.period.min(Duration::from_millis(250))).await;
        };
        if !passed {
            problems.push(format!(
                "{who}: {} GET {url} (port {}) did not pass within {:?}: {last}",
                probe.kind, probe.port, probe.budget
            ));
            return;
        }
    }
}

/// The ports the container's process listens on must be exactly the declared ones.
fn check_listening(who: &str, running: &Running, declared: &[(String, u16)], problems: &mut Vec<String>) {
    let listening = match listening_ports(running.child.id()) {
        Ok(ports) => ports,
        Err(error) => return problems.push(format!("{who}: cannot read its sockets: {error:#}")),
    };
    for (name, port) in declared {
        if !listening.contains(port) {
            problems.push(format!("{who}: declares containerPort {port} ({name}) but does not listen on it"));
        }
    }
    for port in &listening {
        if !declared.iter().any(|(_, p)| p == port) {
            problems.push(format!("{who}: listens on port {port}, which no containerPort declares"));
        }
    }
}

/// TCP ports in LISTEN state on sockets process `pid` holds (from /proc).
fn listening_ports(pid: u32) -> Result<Vec<u16>> {
    let mut inodes = std::collections::BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let link = std::fs::read_link(fd?.path()).unwrap_or_default();
        if let Some(inode) = link.to_str().and_then(|l| l.strip_prefix("socket:[")).and_then(|l| l.strip_suffix(']')) {
            inodes.insert(inode.to_owned());
        }
    }
    let mut ports = std::collections::BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (`ADDR:PORT` in hex), st field 3 (0A = LISTEN), inode field 9.
            if fields.len() > 9
                && fields[3] == "0A"
                && inodes.contains(fields[9])
                && let Some(port) = fields[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    Ok(ports.into_iter().collect())
}

/// Every declared port serves a certificate that verifies against the CA for the pod's own
/// Service name, which is what its callers check.
async fn check_certificates(
    who: &str,
    deployment: &Rendered,
    cluster: &Cluster<'_>,
    declared: &[(String, u16)],
    fixtures: &Fixtures,
    problems: &mut Vec<String>,
) {
    let labels = &deployment.object["spec"]["template"]["metadata"]["labels"];
    let Some(service) = cluster.services().find(|s| super::matches_labels(&s.object["spec"]["selector"], labels))
    else {
        return problems.push(format!("{who}: no Service selects it"));
    };
    let name = format!(
        "{}.{}.svc",
        service.object["metadata"]["name"].as_str().unwrap_or_default(),
        service.object["metadata"]["namespace"].as_str().unwrap_or("default")
    );
    let ca = match reqwest::Certificate::from_pem(fixtures.ca_pem().as_bytes()) {
        Ok(ca) => ca,
        Err(error) => return problems.push(format!("{who}: the test CA does not load: {error}")),
    };
    for (port_name, port) in declared {
        let client = reqwest::Client::builder()
            .tls_certs_only([ca.clone()])
            .resolve(&name, std::net::SocketAddr::from(([127, 0, 0, 1], *port)))
            .timeout(Duration::from_secs(5))
            .build();
        let answered = match client {
            Ok(client) => client.get(format!("https://{name}:{port}/")).send().await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = answered {
            problems.push(format!(
                "{who}: port {port} ({port_name}) does not serve HTTPS valid for {name}: {:#}",
                anyhow::Error::new(error)
            ));
        }
    }
}

/// The image's health check (nix/image.toml's: the binary's `healthcheck` command) run beside the
/// container, as a runtime that honours image health checks would. It comes from the image
/// description, not the image config: an OCI config (a Nix image converted by skopeo) has no
/// `Healthcheck` field.
fn check_image_healthcheck(who: &str, service: &str, prepared: &Prepared, problems: &mut Vec<String>) -> Result<()> {
    let argv = &crate::images::ImageSpec::load()?.healthcheck_command(service);
    let mut running = prepared.start_command("healthcheck", argv)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = running.exited() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.is_some_and(|s| s.success()) {
        problems.push(format!(
            "{who}: the image health check `{}` failed ({status:?}): {}",
            argv.join(" "),
            running.log_tail()
        ));
    }
    Ok(())
}

/// SIGTERM, then the pod must exit 0 within its grace period (else SIGKILL, as the kubelet does).
fn stop(who: &str, running: &mut Running, grace: Duration, problems: &mut Vec<String>) -> Result<()> {
    if let Some(status) = running.exited() {
        problems.push(format!("{who}: exited ({status}) while it should have been running"));
        return Ok(());
    }
    crate::infra::run(Command::new("kill").args(["-TERM", &running.child.id().to_string()]))?;
    let started = Instant::now();
    loop {
        if let Some(status) = running.exited() {
            if !status.success() {
                problems.push(format!("{who}: after SIGTERM it exited with {status}, not 0"));
            }
            return Ok(());
        }
        if started.elapsed() > grace {
            let _ = running.child.kill();
            let _ = running.child.wait();
            problems.push(format!("{who}: still running {grace:?} (terminationGracePeriodSeconds) after SIGTERM"));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `cargo xtask pod-exec <spec>` in a private mount namespace, output to `log`.
fn spawn_in_pod(exe: &Path, exec_file: &Path, log: &Path) -> Result<Running> {
    let output = std::fs::File::create(log)?;
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .arg("pod-exec")
        .arg(exec_file)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .context("start unshare (util-linux)")?;
    Ok(Running { child, log: log.to_path_buf() })
}

/// `cargo xtask pod-exec <spec>` (internal): inside the new mount namespace, lay out the
/// container's mounts and replace this process with the container's entrypoint.
pub fn exec_in_pod(file: &Path) -> Result<()> {
    let spec: ExecSpec = serde_json::from_slice(&std::fs::read(file)?)?;
    let root = &spec.root;
    let at = |path: &str| root.join(path.trim_start_matches('/'));
    let mount = |args: &[&str], target: &Path| crate::infra::run(Command::new("mount").args(args).arg(target));
    mount(&["--bind", &root.to_string_lossy()], root)?;
    mount(&["-t", "proc", "-o", "nosuid,nodev,noexec", "proc"], &at("/proc"))?;
    mount(&["-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs"], &at("/sys"))?;
    mount(&["-t", "tmpfs", "-o", "nosuid,mode=0755,size=1m", "tmpfs"], &at("/dev"))?;
    for device in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = at(&format!("/dev/{device}"));
        std::fs::write(&target, b"")?;
        mount(&["--bind", &format!("/dev/{device}")], &target)?;
    }
    std::fs::create_dir_all(at("/dev/shm"))?;
    mount(&["-t", "tmpfs", "-o", "nosuid,nodev,mode=1777,size=64m", "tmpfs"], &at("/dev/shm"))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, at(&format!("/dev/{link}")))?;
    }
    for path in &spec.writable {
        std::fs::create_dir_all(at(path))?;
        mount(&["-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs"], &at(path))?;
    }
    if spec.read_only_root {
        mount(&["-o", "remount,bind,ro"], root)?;
    }
    let groups = spec.groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    // Resolved here: the container's environment (cleared below) has its own PATH.
    let chroot = crate::infra::which("chroot").context("chroot (coreutils) not found")?;
    let error = Command::new(chroot)
        .arg(format!("--userspec={}:{}", spec.user, spec.group))
        .arg(format!("--groups={groups}"))
        .arg(root)
        .args(&spec.argv)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .exec();
    bail!("cannot exec chroot: {error}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn data() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("database-url".to_owned(), "postgres://…".to_owned()),
            ("jwks.json".to_owned(), "{}".to_owned()),
        ])
    }

    #[test]
    fn a_volume_shows_every_key_or_only_its_items() {
        let all = project(data(), &json!({"secretName": "s"}), 0o440).expect("every key");
        assert_eq!(
            all.iter().map(|(path, _, mode)| (path.as_str(), *mode)).collect::<Vec<_>>(),
            [("database-url", 0o440), ("jwks.json", 0o440)]
        );
        let items =
            json!({"secretName": "s", "items": [{"key": "jwks.json", "path": "keys/jwks.json", "mode": 0o444}]});
        assert_eq!(
            project(data(), &items, 0o440).expect("one item"),
            [("keys/jwks.json".to_owned(), "{}".to_owned(), 0o444)]
        );
    }

    #[test]
    fn a_missing_item_fails_the_mount_unless_optional() {
        let items = json!({"secretName": "s", "items": [{"key": "nope", "path": "nope"}]});
        let error = project(data(), &items, 0o440).expect_err("missing key");
        assert!(error.to_string().contains("item key `nope`"), "{error}");
        let optional = json!({"secretName": "s", "optional": true, "items": [{"key": "nope", "path": "nope"}]});
        assert_eq!(project(data(), &optional, 0o440).expect("optional"), []);
        for path in ["/etc/x", "../x", "a//b"] {
            let items = json!({"secretName": "s", "items": [{"key": "jwks.json", "path": path}]});
            assert!(project(data(), &items, 0o440).is_err(), "{path}");
        }
    }
}
