//! Throwaway PostgreSQL, Redis and moto (AWS emulator) processes, removed when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use platform::testkit::{TempDir, free_port, wait_for_port};

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// An exclusive lock on `<temp>/quilla-<name>.lock`, held until the file is dropped: one process
/// installs a tool while the others (parallel tests) wait, then find it installed.
pub fn install_lock(name: &str) -> Result<fs::File> {
    let path = std::env::temp_dir().join(format!("quilla-{name}.lock"));
    let file = fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    file.lock().with_context(|| format!("lock {}", path.display()))?;
    Ok(file)
}

/// PostgreSQL's server binaries: Debian keeps them in /usr/lib/postgresql/<version>/bin.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    which("pg_ctl").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The full path of a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
        .unwrap_or_default()
}

/// A PostgreSQL cluster in a scratch directory, listening on loopback.
#[derive(Debug)]
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres_user: bool,
    _dir: TempDir,
}

/// How durable the throwaway cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on, as in production (`up`, `bench`).
    Production,
    /// fsync off: faster, fine for tests whose data is thrown away.
    Disposable,
}

impl Postgres {
    pub fn start(durability: Durability) -> Result<Self> {
        Self::start_inner(durability, None)
    }

    /// A server that also accepts TLS, with this certificate chain and key (PEM), as RDS does.
    pub fn start_tls(durability: Durability, certificate: &str, key: &str) -> Result<Self> {
        Self::start_inner(durability, Some((certificate, key)))
    }

    fn start_inner(durability: Durability, tls: Option<(&str, &str)>) -> Result<Self> {
        let bin = postgres_bin_dir().context("PostgreSQL server binaries not found")?;
        let dir = TempDir::try_new("pg")?;
        let as_postgres_user = is_root();
        if as_postgres_user {
            // initdb refuses to run as root; the postgres user must own the directory.
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()))?;
        }
        let data = dir.path().join("data");
        let port = free_port();
        let pg = Self { port, bin, data, as_postgres_user, _dir: dir };
        pg.run_pg("initdb", &["-D", path_str(&pg.data)?, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .context("initdb failed")?;
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=500 -c shared_buffers=256MB",
            path_str(pg._dir.path())?
        );
        if durability == Durability::Disposable {
            options.push_str(" -c fsync=off -c full_page_writes=off");
        }
        if let Some((certificate, key)) = tls {
            // PostgreSQL refuses a key file others can read; the server user must own both.
            let (cert_file, key_file) = (pg._dir.path().join("server.crt"), pg._dir.path().join("server.key"));
            fs::write(&cert_file, certificate)?;
            fs::write(&key_file, key)?;
            run(Command::new("chmod").arg("0600").arg(&key_file))?;
            if pg.as_postgres_user {
                run(Command::new("chown").arg("postgres:postgres").arg(&cert_file).arg(&key_file))?;
            }
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                path_str(&cert_file)?,
                path_str(&key_file)?
            ));
        }
        let log = pg._dir.path().join("postgres.log");
        let started = pg.run_pg(
            "pg_ctl",
            &["-D", path_str(&pg.data)?, "-l", path_str(&log)?, "-o", &options, "-w", "-t", "60", "start"],
        );
        if let Err(error) = started {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            bail!("PostgreSQL did not start: {error}\n{tail}");
        }
        wait_for_port(port, Duration::from_secs(30)).context("PostgreSQL did not start")?;
        Ok(pg)
    }

    /// Superuser URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn create_database(&self, name: &str) -> Result<()> {
        let port = self.port.to_string();
        self.run_pg("createdb", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name])
    }

    fn run_pg(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(args).current_dir(std::env::temp_dir());
        run(&mut command)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(data) = path_str(&self.data) {
            let _ = self.run_pg("pg_ctl", &["-D", data, "-m", "fast", "-w", "stop"]);
        }
    }
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub port: u16,
    child: Child,
}

impl Daemon {
    /// `redis-server` without persistence.
    pub fn redis() -> Result<Self> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        let daemon = Self { port, child };
        wait_for_port(port, Duration::from_secs(10)).context("redis-server did not start")?;
        Ok(daemon)
    }

    /// moto's server: the AWS API emulator used for Secrets Manager tests.
    pub fn moto() -> Result<Self> {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .context("start moto_server")?;
        let daemon = Self { port, child };
        wait_for_port(port, Duration::from_secs(30)).context("moto_server did not start")?;
        Ok(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(command: &mut Command) -> Result<()> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 path")
}

/// A random alphanumeric string, for throwaway passwords and keys.
pub fn random_token(length: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), length)
}
