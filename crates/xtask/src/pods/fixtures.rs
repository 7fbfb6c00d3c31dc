//! What a pod finds around it in the test: a throwaway CA standing in for cert-manager's in-cluster
//! CA (and for the RDS CA), a PostgreSQL that speaks TLS with a certificate that CA signed and
//! holds each service's roles exactly as platform::db::roles specifies them, a Redis, a token
//! issuer's key set, and the values AWS Secrets Manager would hold for each ExternalSecret.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

use platform::auth::dev::{DEV_ISSUER, DevIssuer};
use platform::db::roles::{self, SchemaRoles};
use platform::testkit::TempDir;
use serde_json::Value;

use std::path::{Path, PathBuf};

use crate::infra::{Daemon, Durability, Postgres};
use crate::services::SERVICES;

/// The database the pods use.
const DATABASE: &str = "quilla_pods";
/// Every login's password: the characters a generated one may hold that a URL must escape.
const PASSWORD: &str = "p@ss:w/rd?&%#=";

/// The throwaway CA and the servers it vouches for; stopped when dropped.
pub struct Fixtures {
    ca: CertifiedIssuer<'static, KeyPair>,
    postgres: Postgres,
    redis: Daemon,
    webhook_key: String,
    /// The `auth/jwks` entry: the public key of an issuer made for this run. A key set does not
    /// name its issuer, so it serves every environment's `https://<host>/auth`.
    jwks: String,
    /// A copy of this executable for `pod-exec`: `cargo build` may replace the original while a
    /// long run still needs it.
    exe: (TempDir, PathBuf),
}

impl Fixtures {
    pub fn start() -> Result<Self> {
        let ca = certificate_authority()?;
        let (certificate, key) = issue(&ca, &["localhost".to_owned()])?;
        let postgres = Postgres::start_tls(Durability::Disposable, &certificate, &key)?;
        postgres.create_database(DATABASE)?;
        let mut statements = roles::database_statements(DATABASE);
        for schema in SERVICES.iter().filter_map(|s| s.schema) {
            let roles = SchemaRoles::for_schema(schema);
            statements.extend(roles.statements(DATABASE));
            for login in roles.logins() {
                let password = PASSWORD.replace('\'', "''");
                statements.push(format!("ALTER ROLE {} PASSWORD '{password}'", roles::quote_identifier(&login)));
            }
        }
        let port = postgres.port.to_string();
        crate::infra::run(
            std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", DATABASE, "-v", "ON_ERROR_STOP=1"])
                .args(["-c", &statements.join(";\n")]),
        )
        .context("provision the services' database roles")?;
        let redis = Daemon::redis()?;
        let webhook_key = crate::infra::random_token(48);
        let jwks = DevIssuer::generate(DEV_ISSUER).jwks();
        let dir = TempDir::try_new("xtask-exe")?;
        let exe = dir.path().join("xtask");
        std::fs::copy(std::env::current_exe()?, &exe).context("copy the xtask executable")?;
        Ok(Self { ca, postgres, redis, webhook_key, jwks, exe: (dir, exe) })
    }

    /// The xtask executable pods start `pod-exec` from.
    pub fn exe(&self) -> &Path {
        &self.exe.1
    }

    /// The CA certificate (PEM): what a Certificate's Secret carries as `ca.crt`.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A serving certificate and key (PEM) for `names`, as cert-manager's CA Issuer would sign.
    pub fn issue(&self, names: &[String]) -> Result<(String, String)> {
        issue(&self.ca, names)
    }

    /// What Secrets Manager returns for `external_secret`'s keys: a `<service>/database` entry
    /// holds that service's serving login, `<service>/database-migrator` its migration login; an
    /// ExternalSecret that reads no database entry gets a username no role has. A `data` entry's
    /// value is found under its secretKey, read from its remote key (see `entry`).
    pub fn secret_values(&self, external_secret: &Value) -> Result<BTreeMap<String, String>> {
        let extracted: Vec<&str> = external_secret["spec"]["dataFrom"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| entry["extract"]["key"].as_str())
            .collect();
        let login = SERVICES.iter().find_map(|service| {
            let roles = SchemaRoles::for_schema(service.schema?);
            // Keys are relative to the store's prefix (`transaction-api/database`).
            extracted.iter().find_map(|key| {
                if *key == format!("{}/database", service.name) {
                    Some(roles.app.clone())
                } else if *key == format!("{}/database-migrator", service.name) {
                    Some(roles.migrator.clone())
                } else {
                    None
                }
            })
        });
        let values = [
            ("username", login.unwrap_or_else(|| "no-database-entry".to_owned())),
            ("password", PASSWORD.to_owned()),
            ("host", "localhost".to_owned()),
            ("port", self.postgres.port.to_string()),
            ("dbname", DATABASE.to_owned()),
            ("redis_auth_token", crate::infra::random_token(24)),
            ("redis_host", "localhost".to_owned()),
            ("redis_port", self.redis.port.to_string()),
            // The region's RDS CA bundle (rds-ca-bundle): here, the CA of the test PostgreSQL.
            ("bundle.pem", self.ca.pem()),
        ];
        let mut values: BTreeMap<String, String> =
            values.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
        for data in external_secret["spec"]["data"].as_array().into_iter().flatten() {
            let (Some(secret_key), Some(remote)) = (data["secretKey"].as_str(), data["remoteRef"]["key"].as_str())
            else {
                continue;
            };
            if let Some(value) = self.entry(remote) {
                values.insert(secret_key.to_owned(), value);
            }
        }
        Ok(values)
    }

    /// What the Secrets Manager entry `key` (relative to the store's prefix) holds as its string.
    fn entry(&self, key: &str) -> Option<String> {
        match key {
            // Outside a rotation the previous key is the current one.
            "webhook-signing-key" | "webhook-signing-key-previous" => Some(self.webhook_key.clone()),
            "auth/jwks" => Some(self.jwks.clone()),
            _ => None,
        }
    }
}

fn certificate_authority() -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "quilla pod-start test CA");
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn issue(ca: &CertifiedIssuer<'static, KeyPair>, names: &[String]) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    if names.iter().any(|n| n == "localhost") {
        params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    }
    let certificate = params.signed_by(&key, ca)?;
    Ok((certificate.pem(), key.serialize_pem()))
}
