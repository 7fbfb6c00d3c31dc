//! Checks of the Nix flake that run without nixpkgs: every .nix file parses, and flake.lock
//! pins every input to a full revision with its hash.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// Runs both checks from the workspace root.
pub fn check() -> Result<()> {
    let root = crate::workspace_root();
    let files = nix_files(&root)?;
    ensure!(!files.is_empty(), "no .nix files found");
    for file in &files {
        let output =
            // `--store dummy://`: parsing needs no store, and without it nix-instantiate opens the
            // local one (/nix/var), which fails for a user without a Nix daemon.
            Command::new("nix-instantiate")
                .args(["--parse", "--store", "dummy://"])
                .arg(file)
                .output()
                .context("run nix-instantiate")?;
        if !output.status.success() {
            bail!("{} does not parse:\n{}", file.display(), String::from_utf8_lossy(&output.stderr));
        }
    }
    let lock: Value = serde_json::from_slice(&std::fs::read(root.join("flake.lock")).context("read flake.lock")?)?;
    check_lock(&lock)?;
    println!("xtask: {} .nix files parse; flake.lock pins every input", files.len());
    Ok(())
}

fn nix_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![root.join("flake.nix")];
    for entry in std::fs::read_dir(root.join("nix"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "nix") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every direct input is locked to a GitHub revision with a narHash and lastModified.
fn check_lock(lock: &Value) -> Result<()> {
    ensure!(lock["version"] == 7, "flake.lock version must be 7");
    let root = lock["root"].as_str().context("flake.lock has no root")?;
    let inputs = lock["nodes"][root]["inputs"].as_object().context("root node has no inputs")?;
    for (name, node) in inputs {
        let node = node.as_str().with_context(|| format!("input {name} must name a node"))?;
        let locked = &lock["nodes"][node]["locked"];
        let rev = locked["rev"].as_str().unwrap_or_default();
        ensure!(
            rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
            "input {name}: rev {rev:?} is not a commit"
        );
        let hash = locked["narHash"].as_str().unwrap_or_default();
        ensure!(
            hash.starts_with("sha256-") && hash.len() == 51,
            "input {name}: narHash {hash:?} is not a sha256 SRI hash"
        );
        ensure!(locked["lastModified"].as_u64().is_some_and(|t| t > 1_500_000_000), "input {name}: no lastModified");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_lock;
    use serde_json::json;

    fn lock(rev: &str, hash: &str) -> serde_json::Value {
        json!({
            "version": 7,
            "root": "root",
            "nodes": {
                "root": { "inputs": { "nixpkgs": "nixpkgs" } },
                "nixpkgs": { "locked": { "rev": rev, "narHash": hash, "lastModified": 1_788_549_839u64, "type": "github" } }
            }
        })
    }

    #[test]
    fn accepts_full_pins_and_rejects_partial_ones() {
        let rev = "17de0b976395537756f30a3e78f2f06e5cec89ed";
        let hash = "sha256-kOrCcSIA6w9J1hX5DqHy2k9pDTJymExTsbV74U9UtCA=";
        assert!(check_lock(&lock(rev, hash)).is_ok());
        assert!(check_lock(&lock("main", hash)).is_err(), "a branch is not a pin");
        assert!(check_lock(&lock(rev, "sha256-AAAA")).is_err(), "a truncated hash is not a pin");
    }
}
