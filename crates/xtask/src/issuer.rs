//! The local stack's token issuer: `cargo xtask up` makes a throwaway ES256 key and points both
//! services at its JWKS; `cargo xtask token` signs tokens with it for the running stack. The key
//! lives under the build directory (never in the source tree) and is replaced on every `up`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use platform::auth::dev::{AUDIENCES, DEV_ISSUER, DevIssuer, SCOPES, TokenRequest};

use crate::args::TokenArgs;

/// The issuer's files: its private key (mode 0600) and the JWKS the services read.
#[derive(Debug)]
pub struct LocalIssuer {
    pub issuer: DevIssuer,
    dir: PathBuf,
}

fn state_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    target.join("xtask").join("dev-issuer")
}

impl LocalIssuer {
    /// A fresh key, written for `token` and for the services.
    pub fn create() -> Result<Self> {
        Self::create_in(state_dir())
    }

    /// A fresh key in `dir`, for a stack of its own (a drill) that must not replace `up`'s key.
    pub fn create_in(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let issuer = DevIssuer::generate(DEV_ISSUER);
        let key = dir.join("key.der");
        let _ = std::fs::remove_file(&key);
        std::fs::write(&key, issuer.pkcs8_der()).with_context(|| format!("write {}", key.display()))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(dir.join("jwks.json"), issuer.jwks()).context("write the JWKS")?;
        Ok(Self { issuer, dir })
    }

    /// The key the running stack trusts.
    pub fn load() -> Result<Self> {
        let dir = state_dir();
        let Ok(der) = std::fs::read(dir.join("key.der")) else {
            bail!("no local issuer in {}: start the stack with `cargo xtask up` first", dir.display());
        };
        let issuer = DevIssuer::from_pkcs8(DEV_ISSUER, &der).map_err(anyhow::Error::msg)?;
        Ok(Self { issuer, dir })
    }

    /// `auth.issuers` for the services, as one environment variable (figment's inline syntax).
    pub fn issuers_env(&self) -> String {
        platform::auth::dev::issuers_env(self.issuer.issuer(), &self.dir.join("jwks.json"))
    }

    /// A token for both services.
    pub fn token(&self, subject: &str, role: &str, ttl: Duration) -> String {
        self.issuer.token(&TokenRequest { subject, roles: &[role], scopes: SCOPES, audience: AUDIENCES, ttl })
    }
}

/// `cargo xtask token --sub <user> [--role customer|service] [--ttl 15m]`: the token on the last
/// line of stdout, what it holds on stderr. The role and the TTL's range are checked by the parser.
pub fn run(args: &TokenArgs) -> Result<()> {
    let TokenArgs { sub: subject, role, ttl } = args;
    let role = role.as_str();
    let issuer = LocalIssuer::load()?;
    eprintln!(
        "xtask: {role} token for `{subject}`, valid {}, scopes: {}",
        humantime::format_duration(*ttl),
        SCOPES.join(" ")
    );
    println!("{}", issuer.token(subject, role, *ttl));
    Ok(())
}
