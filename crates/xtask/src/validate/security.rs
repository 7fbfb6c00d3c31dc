//! Security scan of the rendered manifests with checkov, in its own pinned virtualenv.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::Rendered;

/// The frozen requirements of the scanner (checkov pins many libraries of its own, so it lives
/// in a venv of its own instead of beside moto and the other test tools).
const REQUIREMENTS: &str = ".ci/security-scan.txt";

/// Runs checkov over every rendered object with the repository's `.checkov.yaml` (recorded
/// skips, each with its reason). Any failed check fails the scan.
pub fn scan(root: &Path, objects: &[Rendered]) -> Result<()> {
    let checkov = ensure_checkov(root)?;
    let dir = std::env::temp_dir().join(format!("xtask-checkov-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = write_and_scan(root, &checkov, &dir, objects);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn write_and_scan(root: &Path, checkov: &Path, dir: &Path, objects: &[Rendered]) -> Result<()> {
    // One JSON file per object: checkov reads JSON manifests, and JSON keeps numbers exact.
    for (index, object) in objects.iter().enumerate() {
        let name = format!("{index:04}-{}.json", object.source.replace('/', "-"));
        std::fs::write(dir.join(name), serde_json::to_vec_pretty(&object.object)?)?;
    }
    println!("xtask: run checkov over the rendered manifests");
    let status = Command::new(checkov)
        .arg("--config-file")
        .arg(root.join(".checkov.yaml"))
        .arg("--directory")
        .arg(dir)
        .status()
        .context("run checkov")?;
    if !status.success() {
        bail!("checkov found problems in the rendered manifests (see above; skips go in .checkov.yaml with a reason)");
    }
    Ok(())
}

/// `checkov` from a venv under ~/.cache/quilla, (re)installed when the requirements change.
fn ensure_checkov(root: &Path) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home).join(".cache/quilla/checkov-venv");
    let requirements = root.join(REQUIREMENTS);
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read(&requirements).with_context(|| format!("read {REQUIREMENTS}"))?;
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
