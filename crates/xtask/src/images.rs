//! `cargo xtask images`: static service binaries packed into daemonless OCI image layouts, and
//! `--check`: size, non-root user, no shell, and the binary running in an empty root.
//!
//! Each image holds exactly: the static binary, CA certificates, and passwd/group entries for
//! the non-root user. Entries are sorted with fixed owners and timestamps, and gzip has no
//! timestamp, so the same binary always gives the same digests. User, paths, env, ports, labels
//! and health check come from nix/image.toml, which nix/images.nix reads too: the Nix flake builds
//! the same image from musl binaries (see docs/adr/0005-distroless-images.md).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use platform::testkit::TempDir;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::args::ImagesArgs;
use crate::infra::{is_root, which};
use crate::services::SERVICES;

/// Compressed size every image must stay under.
const SIZE_LIMIT: u64 = 20 * 1024 * 1024;
/// The size we aim for.
const SIZE_GOAL: u64 = 12 * 1024 * 1024;
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Where the host's CA bundle is read from (Debian's ca-certificates).
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// nix/image.toml: the one description of every service image.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub user: u32,
    pub group: u32,
    pub user_name: String,
    binary: String,
    pub ca_bundle: String,
    /// The API port every pod listens on.
    pub port: u16,
    /// The probes' and metrics' port.
    pub admin_port: u16,
    pub cmd: Vec<String>,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    healthcheck: Healthcheck,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    test: Vec<String>,
    interval_seconds: u64,
    timeout_seconds: u64,
    retries: u32,
}

impl ImageSpec {
    /// Reads nix/image.toml from the workspace.
    pub fn load() -> Result<Self> {
        let path = crate::workspace_root().join("nix/image.toml");
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let spec: Self = toml::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
        ensure!(spec.user != 0 && spec.group != 0, "{}: the image user must not be root", path.display());
        Ok(spec)
    }

    /// The binary's absolute path in `service`'s image.
    pub fn binary(&self, service: &str) -> String {
        self.binary.replace("{service}", service)
    }

    /// `KEY=value` pairs, sorted.
    pub fn env(&self) -> Vec<String> {
        self.env.iter().map(|(key, value)| format!("{key}={value}")).collect()
    }

    /// The health check's command for `service` (the `CMD` form, without the `CMD`).
    pub fn healthcheck_command(&self, service: &str) -> Vec<String> {
        let test = self.healthcheck.test.iter().map(|part| part.replace("{service}", service));
        test.skip_while(|part| part == "CMD").collect()
    }

    fn user_spec(&self) -> String {
        format!("{}:{}", self.user, self.group)
    }
}

/// One image's numbers, for the size table.
struct Built {
    service: &'static str,
    binary: u64,
    layer_uncompressed: u64,
    compressed_total: u64,
    digest: String,
    layout: PathBuf,
}

pub fn run(args: &ImagesArgs) -> Result<()> {
    let spec = ImageSpec::load()?;
    let out = images_dir();
    let binaries = build_static_binaries()?;
    let mut built = Vec::new();
    for service in SERVICES.iter().map(|s| s.name) {
        let binary = binaries.join(service);
        built.push(write_layout(&spec, service, &binary, &out.join(service))?);
    }
    print_table(&built);
    if args.check {
        for image in &built {
            check_image(image.service, &image.layout)?;
            println!("xtask: ok  {} image checks", image.service);
        }
    }
    Ok(())
}

/// Where layouts go: beside the build cache, outside the clone.
pub fn images_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    target.join("oci")
}

/// `cargo build --release` for the gnu target with glibc linked in statically (Nix uses musl).
fn build_static_binaries() -> Result<PathBuf> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.args(["build", "--release", "--locked", "--target", TARGET]).current_dir(crate::workspace_root());
    for service in SERVICES.iter().map(|s| s.name) {
        command.args(["-p", service]);
    }
    // With --target, RUSTFLAGS reach only the target artifacts, not build scripts.
    command.env("RUSTFLAGS", "-C target-feature=+crt-static");
    ensure!(command.status().context("run cargo build")?.success(), "building static binaries failed");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    Ok(target.join(TARGET).join("release"))
}

/// A file to put in the layer.
struct Entry {
    path: String,
    mode: u32,
    contents: Vec<u8>,
}

fn layer_entries(spec: &ImageSpec, service: &str, binary: &Path) -> Result<(Vec<String>, Vec<Entry>)> {
    let binary = fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    let certificates = fs::read(HOST_CA_BUNDLE)
        .with_context(|| format!("{HOST_CA_BUNDLE} is missing: install the ca-certificates package"))?;
    let (user, group, name) = (spec.user, spec.group, &spec.user_name);
    let files = [
        ("/etc/group".to_owned(), 0o644, format!("root:x:0:\n{name}:x:{group}:\n").into_bytes()),
        (
            "/etc/passwd".to_owned(),
            0o644,
            format!("root:x:0:0:root:/root:/sbin/nologin\n{name}:x:{user}:{group}:{name}:/home/{name}:/sbin/nologin\n")
                .into_bytes(),
        ),
        (spec.ca_bundle.clone(), 0o644, certificates),
        (spec.binary(service), 0o755, binary),
    ];
    let mut dirs = std::collections::BTreeSet::new();
    let mut entries = Vec::new();
    for (path, mode, contents) in files {
        let relative = path.trim_start_matches('/').to_owned();
        let mut parent = Path::new(&relative).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", dir.display()));
            parent = dir.parent();
        }
        entries.push(Entry { path: relative, mode, contents });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((dirs.into_iter().collect(), entries))
}

/// A reproducible tar of the layer: sorted paths, owner 0, mtime 0.
fn layer_tar(spec: &ImageSpec, service: &str, binary: &Path) -> Result<Vec<u8>> {
    let (dirs, entries) = layer_entries(spec, service, binary)?;
    let mut builder = tar::Builder::new(Vec::new());
    for dir in dirs {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder.append_data(&mut header, dir, std::io::empty())?;
    }
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(entry.mode);
        header.set_size(entry.contents.len() as u64);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder.append_data(&mut header, &entry.path, entry.contents.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a blob under `blobs/sha256/` and returns its descriptor.
fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Result<Value> {
    let digest = sha256(bytes);
    fs::write(layout.join("blobs/sha256").join(&digest), bytes)?;
    Ok(json!({ "mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len() }))
}

fn git_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(crate::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn write_layout(spec: &ImageSpec, service: &'static str, binary: &Path, layout: &Path) -> Result<Built> {
    let _ = fs::remove_dir_all(layout);
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    let tar = layer_tar(spec, service, binary)?;
    let diff_id = format!("sha256:{}", sha256(&tar));
    let mut gzip = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    gzip.write_all(&tar)?;
    let layer = write_blob(layout, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip.finish()?)?;
    let entrypoint = spec.binary(service);
    let mut labels = json!({
        "org.opencontainers.image.title": service,
        "org.opencontainers.image.revision": git_revision(),
        "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
    });
    for (key, value) in &spec.labels {
        labels[key] = json!(value);
    }
    let exposed: serde_json::Map<String, Value> =
        [spec.port, spec.admin_port].iter().map(|port| (format!("{port}/tcp"), json!({}))).collect();
    let healthcheck: Vec<String> =
        spec.healthcheck.test.iter().map(|part| part.replace("{service}", service)).collect();
    let config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": spec.user_spec(),
            "Entrypoint": [entrypoint],
            "Cmd": spec.cmd,
            "Env": spec.env(),
            "ExposedPorts": exposed,
            "Labels": labels,
            "Healthcheck": {
                "Test": healthcheck,
                "Interval": spec.healthcheck.interval_seconds * 1_000_000_000,
                "Timeout": spec.healthcheck.timeout_seconds * 1_000_000_000,
                "Retries": spec.healthcheck.retries,
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask images" }],
    });
    let config = write_blob(layout, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
        "annotations": labels,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let mut descriptor = write_blob(layout, "application/vnd.oci.image.manifest.v1+json", &manifest_bytes)?;
    descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": env!("CARGO_PKG_VERSION") });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [descriptor] }))?,
    )?;
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let size = |d: &Value| d["size"].as_u64().unwrap_or_default();
    Ok(Built {
        service,
        binary: fs::metadata(binary)?.len(),
        layer_uncompressed: tar.len() as u64,
        compressed_total: size(&layer) + size(&config) + manifest_bytes.len() as u64,
        digest: descriptor["digest"].as_str().unwrap_or_default().to_owned(),
        layout: layout.to_path_buf(),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_table(built: &[Built]) {
    println!("| image | static binary | layer (uncompressed) | image (compressed) | goal ≤ 12 MiB | manifest digest |");
    println!("|---|---:|---:|---:|:---:|---|");
    for image in built {
        println!(
            "| {} | {} | {} | {} | {} | `{}` |",
            image.service,
            mib(image.binary),
            mib(image.layer_uncompressed),
            mib(image.compressed_total),
            if image.compressed_total <= SIZE_GOAL { "yes" } else { "no" },
            image.digest
        );
    }
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_slice(&fs::read(path).with_context(|| format!("read {}", path.display()))?)
        .with_context(|| format!("parse {}", path.display()))
}

/// Reads a blob and verifies that its content matches its digest.
fn read_blob(layout: &Path, descriptor: &Value) -> Result<Vec<u8>> {
    let digest = descriptor["digest"].as_str().context("descriptor without digest")?;
    let hex = digest.strip_prefix("sha256:").context("digest is not sha256")?;
    let bytes = fs::read(layout.join("blobs/sha256").join(hex))?;
    ensure!(sha256(&bytes) == hex, "blob {digest} does not match its content");
    ensure!(descriptor["size"].as_u64() == Some(bytes.len() as u64), "blob {digest} has the wrong size");
    Ok(bytes)
}

/// An image unpacked into a directory, as a container runtime lays out its root filesystem.
pub struct Unpacked {
    /// The image config (`User`, `Env`, `Entrypoint`, `Cmd`, `ExposedPorts`, ...).
    pub config: Value,
    /// Every path in the layers.
    pub paths: Vec<PathBuf>,
    /// Bytes of index entry, config and compressed layers.
    pub compressed: u64,
}

/// Verifies every blob of `layout` against its digest and unpacks its layers into `root`.
pub fn unpack(layout: &Path, root: &Path) -> Result<Unpacked> {
    let index = read_json(&layout.join("index.json"))?;
    let manifest: Value = serde_json::from_slice(&read_blob(layout, &index["manifests"][0])?)?;
    let config: Value = serde_json::from_slice(&read_blob(layout, &manifest["config"])?)?;
    let layers = manifest["layers"].as_array().context("manifest without layers")?;
    let mut compressed = index["manifests"][0]["size"].as_u64().unwrap_or_default()
        + manifest["config"]["size"].as_u64().unwrap_or_default();
    let mut paths = Vec::new();
    for layer in layers {
        let blob = read_blob(layout, layer)?;
        compressed += blob.len() as u64;
        // Ours are gzip; a layout skopeo made from a docker archive (the Nix images) has plain tar.
        let tar_bytes = match layer["mediaType"].as_str().unwrap_or_default() {
            "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                let mut tar_bytes = Vec::new();
                flate2::read::GzDecoder::new(blob.as_slice()).read_to_end(&mut tar_bytes)?;
                tar_bytes
            }
            "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => blob,
            other => bail!("layer media type `{other}` is not supported"),
        };
        for entry in tar::Archive::new(tar_bytes.as_slice()).entries()? {
            paths.push(entry?.path()?.into_owned());
        }
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        archive.set_preserve_permissions(true);
        archive.unpack(root)?;
    }
    Ok(Unpacked { config: config["config"].clone(), paths, compressed })
}

/// Checks one layout: integrity, size, user, no shell, and the binary running in an empty root.
pub fn check_image(service: &str, layout: &Path) -> Result<()> {
    let root = TempDir::try_new("image")?;
    let Unpacked { config, paths, compressed } = unpack(layout, root.path())?;
    for path in &paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        ensure!(
            !matches!(name, "sh" | "bash" | "ash" | "dash" | "zsh" | "ksh" | "busybox"),
            "{service}: the image contains a shell: {}",
            path.display()
        );
    }
    ensure!(compressed < SIZE_LIMIT, "{service}: image is {} compressed, over the 20 MiB limit", mib(compressed));
    let user = config["User"].as_str().unwrap_or_default();
    let uid = user.split(':').next().unwrap_or_default();
    ensure!(!uid.is_empty() && uid != "0" && uid != "root", "{service}: the image runs as root (User {user:?})");
    ensure!(
        !root.path().join("bin/sh").exists() && !root.path().join("usr/bin/sh").exists(),
        "{service}: /bin/sh present"
    );

    let entrypoint = config["Entrypoint"][0].as_str().context("no entrypoint")?;
    let version = run_in_empty_root(root.path(), entrypoint, "--version")?;
    ensure!(version.0 == Some(0), "{service} --version failed in an empty root: {}", version.2);
    ensure!(
        version.1.trim() == format!("{service} {}", env!("CARGO_PKG_VERSION")),
        "{service} --version printed {:?}",
        version.1
    );
    // With nothing configured, startup must stop at config validation, naming the key.
    let serve = run_in_empty_root(root.path(), entrypoint, "serve")?;
    ensure!(serve.0 == Some(78), "{service} without config exited {:?}, expected 78: {}", serve.0, serve.2);
    // Trusted token issuers are the first thing every environment must set (docs/adr/0010).
    ensure!(serve.2.contains("`auth.issuers`"), "{service} config error does not name the key: {}", serve.2);

    if which("skopeo").is_some() {
        let status = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}", layout.display()))
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "{service}: skopeo cannot read the layout");
    }
    Ok(())
}

/// Runs the image's binary with an empty environment: chrooted into the unpacked image when we
/// are root (nothing but the image exists), otherwise straight from the unpacked directory.
fn run_in_empty_root(root: &Path, entrypoint: &str, arg: &str) -> Result<(Option<i32>, String, String)> {
    let chroot = which("chroot").or_else(|| Some(PathBuf::from("/usr/sbin/chroot")).filter(|p| p.is_file()));
    let mut command = if let Some(chroot) = chroot.filter(|_| is_root()) {
        // Resolved here: the cleared environment below has no PATH to search.
        let mut c = Command::new(chroot);
        c.arg(root).arg(entrypoint);
        c
    } else {
        Command::new(root.join(entrypoint.trim_start_matches('/')))
    };
    let output = command.arg(arg).env_clear().stdin(Stdio::null()).output().context("run the image's binary")?;
    if output.status.code().is_none() {
        bail!("the binary was killed by a signal ({})", output.status);
    }
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}
