//! A local PostgreSQL cluster, for trying a system on a server database on one machine (and
//! for the test suite's PostgreSQL profile): a primary, and if asked a streaming replica,
//! initialised into a directory and run on loopback ports. Production gives URLs instead
//! (`docs/databases.md`).
//!
//! The cluster is PostgreSQL's own programs (`initdb`, `pg_ctl`, `pg_basebackup`), run as the
//! `postgres` user when this runs as root (the server refuses root). Connections over TCP
//! need the password `initdb` was given, kept in `<dir>/password` (mode 0600); the replica
//! streams from the primary with it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use tessera_manifest::Manifest;

/// A running local cluster.
pub struct Local {
    pub primary: String,
    pub replica: Option<String>,
}

/// The cluster of a system run with `--profile postgres`; stopped when dropped.
pub struct SystemCluster {
    pub dir: PathBuf,
    pub primary: String,
}

impl Drop for SystemCluster {
    fn drop(&mut self) {
        if let Err(e) = stop(&self.dir) {
            eprintln!("tessera: stopping PostgreSQL: {e:#}");
        }
    }
}

/// `tessera up --profile postgres`: starts the local cluster under the state directory, makes
/// a database for each service that names none of its own (`order`, `payment_provider`, …),
/// and points the system's `database` at them.
pub fn for_system(
    manifest: &mut Manifest,
    state_dir: &Path,
    port: u16,
) -> anyhow::Result<SystemCluster> {
    if manifest.system.database.is_some() {
        bail!(
            "--profile postgres runs a PostgreSQL of its own, and this manifest already names \
             one (system.database): run without --profile"
        );
    }
    let dir = system_dir(state_dir);
    let local = start(&dir, port, true)?;
    let cluster = SystemCluster {
        dir,
        primary: local.primary,
    };
    let bin = programs()?;
    for (name, spec) in &manifest.services {
        if spec.database.is_none() {
            ensure_database(&bin, &cluster.primary, &name.replace('-', "_"))?;
        }
    }
    manifest.system.database = Some(with_database(&cluster.primary, "{service}"));
    manifest.system.database_replicas = local
        .replica
        .iter()
        .map(|r| with_database(r, "{service}"))
        .collect();
    Ok(cluster)
}

/// Where the cluster of the system whose state is in `state_dir` lives: `<state_dir>/postgres`,
/// but as root under `/var/lib/tessera/postgres/`: the server runs as the `postgres` user,
/// which may not enter the state directory (mode 0700: it holds the system's keys).
pub fn system_dir(state_dir: &Path) -> PathBuf {
    if !is_root() {
        return state_dir.join("postgres");
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf())
        .hash(&mut hasher);
    PathBuf::from("/var/lib/tessera/postgres").join(format!("{:016x}", hasher.finish()))
}

/// Creates database `name` on the server of `url` unless it exists.
fn ensure_database(bin: &Path, url: &str, name: &str) -> anyhow::Result<()> {
    // The password goes in psql's environment, not on its command line (which any local
    // user can read).
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map_or("", |(_, pw)| pw);
    let without = tessera::Db::redact_url(url).replace(":***@", "@");
    let psql = |sql: &str| -> anyhow::Result<String> {
        let out = Command::new(bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                &without,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", password)
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if psql(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{name}'"
    ))? != "1"
    {
        psql(&format!("CREATE DATABASE \"{name}\""))?;
    }
    Ok(())
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => url.to_string(),
    }
}

/// Where PostgreSQL's server programs are: `$TESSERA_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else the `PATH`.
pub fn programs() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TESSERA_POSTGRES_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    });
    on_path.ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed. On Debian or \
             Ubuntu: `apt-get install postgresql` (or set TESSERA_POSTGRES_BIN to their \
             directory); or give the services a database URL instead (docs/databases.md)"
        )
    })
}

/// Starts (initialising on first use) the cluster in `dir`: the primary on `port`, and with
/// `replica` a streaming replica on `port + 1`. Returns their URLs (database `postgres`).
pub fn start(dir: &Path, port: u16, replica: bool) -> anyhow::Result<Local> {
    let bin = programs()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let password = password(&dir)?;
    let primary = dir.join("primary");
    if !primary.join("PG_VERSION").exists() {
        let pwfile = dir.join("password");
        run(
            &bin,
            "initdb",
            &dir,
            &[
                "-D".as_ref(),
                primary.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
            ],
        )?;
        append(
            &primary.join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                 max_connections = 400\nwal_level = replica\nmax_wal_senders = 4\n\
                 hot_standby = on\n",
                dir.display()
            ),
        )?;
    }
    pg_ctl_start(&bin, &dir, &primary, port)?;
    let url = |port: u16| format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres");
    let mut local = Local {
        primary: url(port),
        replica: None,
    };
    if replica && let Err(e) = start_replica(&bin, &dir, port, &password) {
        // Nothing half-started is left running.
        let _ = stop(&dir);
        return Err(e);
    }
    if replica {
        local.replica = Some(url(port + 1));
    }
    Ok(local)
}

/// Makes (on first use) and starts the streaming replica of the primary on `port`, on the next
/// port.
fn start_replica(bin: &Path, dir: &Path, port: u16, password: &str) -> anyhow::Result<()> {
    let standby = dir.join("replica");
    if !standby.join("PG_VERSION").exists() {
        run_with(
            bin,
            "pg_basebackup",
            dir,
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.to_string().as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-D".as_ref(),
                standby.as_os_str(),
                "-R".as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
            ],
            &[("PGPASSWORD", password)],
        )?;
    }
    pg_ctl_start(bin, dir, &standby, port + 1)
}

/// Stops the cluster in `dir` (the replica first), if it runs.
pub fn stop(dir: &Path) -> anyhow::Result<()> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(()); // nothing was ever started there
    };
    let dir = dir.as_path();
    let bin = programs()?;
    let mut failed = None;
    for node in ["replica", "primary"] {
        let data = dir.join(node);
        if data.join("postmaster.pid").exists() {
            // Both are stopped even if one fails; the first failure is told.
            let stopped = run(
                &bin,
                "pg_ctl",
                dir,
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-m".as_ref(),
                    "fast".as_ref(),
                    "-w".as_ref(),
                    "stop".as_ref(),
                ],
            );
            if let Err(e) = stopped {
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

fn pg_ctl_start(bin: &Path, dir: &Path, data: &Path, port: u16) -> anyhow::Result<()> {
    if data.join("postmaster.pid").exists()
        && run(
            bin,
            "pg_ctl",
            dir,
            &["-D".as_ref(), data.as_os_str(), "status".as_ref()],
        )
        .is_ok()
    {
        return Ok(());
    }
    let log = data.with_extension("log");
    // The port given now, whatever the one it was initialised with.
    let port = format!("-p {port}");
    run(
        bin,
        "pg_ctl",
        dir,
        &[
            "-D".as_ref(),
            data.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
            "-o".as_ref(),
            port.as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "30".as_ref(),
            "start".as_ref(),
        ],
    )
    .with_context(|| format!("the server did not start; its log is {}", log.display()))
}

/// The password of the cluster's `postgres` user, made on first use.
fn password(dir: &Path) -> anyhow::Result<String> {
    let file = dir.join("password");
    if let Ok(existing) = std::fs::read_to_string(&file) {
        return Ok(existing.trim().to_string());
    }
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let password: String = (0..32)
        .map(|_| char::from(alphabet[rand::random::<usize>() % alphabet.len()]))
        .collect();
    // Made private from the start, not narrowed after it was written.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)?;
    std::io::Write::write_all(&mut out, password.as_bytes())?;
    Ok(password)
}

fn append(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn run(bin: &Path, program: &str, dir: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    run_with(bin, program, dir, args, &[])
}

/// Runs one of PostgreSQL's programs; as root, as the `postgres` user, after giving it `dir`.
fn run_with(
    bin: &Path,
    program: &str,
    dir: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    let path = bin.join(program);
    let mut cmd = if is_root() {
        let chown = Command::new("chown")
            .arg("-R")
            .arg("postgres:")
            .arg(dir)
            .status()?;
        if !chown.success() {
            bail!(
                "cannot give {} to the postgres user (is there one?)",
                dir.display()
            );
        }
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    cmd.args(args).envs(env.iter().copied()).current_dir(dir);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    })
}
