//! The local stack: a tansu broker with sqlite storage and the built-in schema registry,
//! started as background processes under a data directory, topics created, schemas registered.
//!
//! Layout of the data directory:
//! ```text
//! tansu/tansu.db   broker storage (sqlite; durable across restarts)
//! tansu.pid, tansu.log, registry.pid, registry.log
//! stack.env        STREAMSCORE_BOOTSTRAP and STREAMSCORE_REGISTRY_URL, for shells and tests,
//!                  STREAMSCORE_BROKER_PID / STREAMSCORE_REGISTRY_PID, for the load
//!                  benches that report the broker's CPU, and the audit key and head paths
//! audit.key        the audit log's HMAC key (made once, kept across restarts; never in Kafka)
//! audit-heads/     the audit chains' head checkpoints
//! ```
//! `up` is idempotent: running parts are reused, missing ones started. `down` stops both.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use streamscore_kafka::{ensure_topics, event_topics_with, KafkaConfig, TopicOutcome};

/// The tansu version the project is tested with.
pub const TANSU_VERSION: &str = "0.6.0";

/// Where and how the stack runs.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub data_dir: PathBuf,
    /// Broker port on 127.0.0.1; 0 picks a free one.
    pub broker_port: u16,
    /// Registry port on 127.0.0.1; 0 picks a free one.
    pub registry_port: u16,
    /// Partitions of the request, validated and prediction topics (dead letters: as many, at
    /// most 3) when `up` creates them; existing topics keep theirs. `stack up` defaults to
    /// [`streamscore_kafka::topics::LOCAL_PARTITIONS`].
    pub partitions: i32,
}

/// Addresses of a running stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackAddrs {
    pub bootstrap: String,
    /// The registry's URL with the writer's credentials in it (`http://user:password@host:port`),
    /// which every client here sends as HTTP basic authentication.
    pub registry_url: String,
    /// `admin:password` of the registry's admin (deletes, config), for operators.
    pub registry_admin: Option<String>,
}

impl StackAddrs {
    fn env_file(&self) -> String {
        let mut env =
            format!("STREAMSCORE_BOOTSTRAP={}\nSTREAMSCORE_REGISTRY_URL={}\n", self.bootstrap, self.registry_url);
        if let Some(admin) = &self.registry_admin {
            env.push_str(&format!("STREAMSCORE_REGISTRY_ADMIN_USER_INFO={admin}\n"));
        }
        env
    }

    fn parse_env_file(text: &str) -> Option<Self> {
        let get = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).map(str::to_owned)
        };
        Some(Self {
            bootstrap: get("STREAMSCORE_BOOTSTRAP")?,
            registry_url: get("STREAMSCORE_REGISTRY_URL")?,
            registry_admin: get("STREAMSCORE_REGISTRY_ADMIN_USER_INFO"),
        })
    }
}

/// `url` without its credentials, for printing.
pub fn redact(url: &str) -> String {
    streamscore_contracts::codec::redact_credentials(url)
}

/// Writes `text` to `path` readable by its owner only (credentials).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    // An existing file keeps its mode on open: set it.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// The audit key file (made with 256 random bits the first time, then kept: chains written
/// before a restart must still verify) and the head checkpoint directory, absolute.
pub fn audit_paths(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let key_file = dir.join("audit.key");
    if !key_file.is_file() {
        let key = format!("{}{}\n", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        write_private(&key_file, &key)?;
    }
    let head_dir = dir.join("audit-heads");
    fs::create_dir_all(&head_dir).with_context(|| format!("creating {}", head_dir.display()))?;
    Ok((key_file, head_dir))
}

/// New credentials for the registry: its users file (hashes) and the plain `user:password`
/// of the writer (the stages) and of the admin.
fn registry_credentials(dir: &Path) -> Result<(PathBuf, String, String)> {
    let writer = uuid::Uuid::new_v4().simple().to_string();
    let admin = uuid::Uuid::new_v4().simple().to_string();
    let users = format!(
        "# streamscore registry users (name:role:sha256-of-password), written by `streamscore stack up`\n\
         streamscore:writer:{}\nadmin:admin:{}\n",
        streamscore_registry::auth::password_sha256(&writer),
        streamscore_registry::auth::password_sha256(&admin),
    );
    let path = dir.join("registry-users");
    write_private(&path, &users)?;
    Ok((path, format!("streamscore:{writer}"), format!("admin:{admin}")))
}

/// The tansu binary: `$STREAMSCORE_TANSU`, then cargo's bin directory, then `PATH`.
pub fn find_tansu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STREAMSCORE_TANSU").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    cargo_bin_dir().map(|dir| dir.join("tansu")).filter(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("tansu")).find(|p| p.is_file()))
    })
}

fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// Returns the tansu binary, installing it from crates.io first if it is missing.
pub fn ensure_tansu() -> Result<PathBuf> {
    if let Some(path) = find_tansu() {
        return Ok(path);
    }
    eprintln!(
        "tansu {TANSU_VERSION} is not installed; installing it from crates.io once \
         (cargo install tansu --version {TANSU_VERSION} --locked --features libsql; about 9 minutes on 2 cores)"
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "tansu", "--version", TANSU_VERSION, "--locked", "--features", "libsql"])
        .status()
        .context("running cargo install tansu (is cargo on PATH?)")?;
    if !status.success() {
        bail!("cargo install tansu failed ({status}); see its output above");
    }
    find_tansu().context("tansu was installed but is not in cargo's bin directory; set STREAMSCORE_TANSU to its path")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `pid` is a live process whose command line mentions `name`.
fn alive(pid: u32, name: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).map(|cmd| String::from_utf8_lossy(&cmd).contains(name)).unwrap_or(false)
        && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Spawns a detached background process with output to `log`, recording its pid in `pid_file`.
fn spawn_daemon(mut command: Command, log: &Path, pid_file: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    fs::write(pid_file, child.id().to_string())?;
    Ok(child.id())
}

/// The command line of a tansu broker on `port` storing `tansu.db` in `data_dir`.
///
/// tansu resolves a sqlite URL's path against its working directory, so the broker runs in
/// `data_dir` with a relative URL.
pub fn tansu_command(tansu: &Path, data_dir: &Path, port: u16) -> Command {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(tansu);
    command
        .current_dir(data_dir)
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", &storage_engine()]);
    command.env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".to_owned()));
    command
}

/// Adds the index tansu 0.6's sqlite storage lacks: its fetch looks up every record's headers
/// (`header_fetch.sql`) in a `header` table with no index on `(topition, offset_id)`, a scan of
/// every header the broker holds, per record fetched. Measured: 30,000 records with two headers
/// each (the sealed outputs of a few seconds of the main job) made fetching 2,000 requests that
/// carry none take 5.33 s instead of 0.66 s; with the index, 0.42 s. Run once the broker is up
/// (it makes its tables at start); idempotent. Does nothing for another storage engine.
pub fn index_tansu_storage(data_dir: &Path) -> Result<()> {
    if storage_engine() != "sqlite://tansu.db" {
        return Ok(());
    }
    let db = data_dir.join("tansu.db");
    let connection =
        rusqlite::Connection::open(&db).with_context(|| format!("opening the broker's storage {}", db.display()))?;
    connection.busy_timeout(Duration::from_secs(30))?;
    let started = Instant::now();
    let has_headers = |c: &rusqlite::Connection| -> rusqlite::Result<bool> {
        c.query_row("select count(*) from sqlite_master where type = 'table' and name = 'header'", [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| n > 0)
    };
    while !has_headers(&connection)? {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{}: the broker made no `header` table within 30 s", db.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    connection
        .execute_batch("create index if not exists streamscore_header_record on header (topition, offset_id)")
        .with_context(|| format!("indexing the record headers in {}", db.display()))
}

/// The broker's storage: `$STREAMSCORE_TANSU_STORAGE`, else sqlite in the data directory.
pub fn storage_engine() -> String {
    std::env::var("STREAMSCORE_TANSU_STORAGE").unwrap_or_else(|_| "sqlite://tansu.db".to_owned())
}

async fn wait_http_ok(url: &str, timeout: Duration) -> Result<()> {
    let client = streamscore_contracts::http::client();
    let started = Instant::now();
    loop {
        match client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if started.elapsed() > timeout => bail!("{url} did not answer within {timeout:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Brings the stack up (idempotent) and returns its addresses.
pub async fn up(config: &StackConfig) -> Result<StackAddrs> {
    let dir = &config.data_dir;
    fs::create_dir_all(dir.join("tansu")).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let previous = fs::read_to_string(dir.join("stack.env")).ok().and_then(|t| StackAddrs::parse_env_file(&t));

    // Broker.
    let tansu_pid = read_pid(&dir.join("tansu.pid")).filter(|&pid| alive(pid, "tansu"));
    let (bootstrap, broker_pid) = match (tansu_pid, &previous) {
        (Some(pid), Some(prev)) => {
            println!("broker    running   tansu pid {pid} on {}", prev.bootstrap);
            (prev.bootstrap.clone(), pid)
        }
        _ => {
            let tansu = ensure_tansu()?;
            let port = if config.broker_port == 0 { free_port()? } else { config.broker_port };
            let pid = spawn_daemon(
                tansu_command(&tansu, &dir.join("tansu"), port),
                &dir.join("tansu.log"),
                &dir.join("tansu.pid"),
            )?;
            println!(
                "broker    started   tansu pid {pid} on 127.0.0.1:{port} (sqlite storage in {})",
                dir.join("tansu").display()
            );
            (format!("127.0.0.1:{port}"), pid)
        }
    };
    let kafka = KafkaConfig::new(&bootstrap);
    let probe = kafka.clone();
    tokio::task::spawn_blocking(move || probe.wait_until_reachable(Duration::from_secs(30)))
        .await?
        .with_context(|| format!("broker log: {}", dir.join("tansu.log").display()))?;
    let storage = dir.join("tansu");
    tokio::task::spawn_blocking(move || index_tansu_storage(&storage)).await??;

    // Topics.
    let specs = event_topics_with(config.partitions);
    for (spec, outcome) in specs.iter().zip(ensure_topics(&kafka, &specs).await?) {
        match outcome {
            TopicOutcome::Existed { partitions, .. } if partitions != spec.partitions => println!(
                "topic     {outcome}; asked for {}: an existing topic keeps its partitions \
                 (a new --data-dir starts with the new count)",
                spec.partitions
            ),
            outcome => println!("topic     {outcome}"),
        }
    }

    // Registry.
    let registry_pid = read_pid(&dir.join("registry.pid")).filter(|&pid| alive(pid, "registry"));
    let (registry_url, registry_admin, registry_pid) = match (registry_pid, &previous) {
        (Some(pid), Some(prev)) => {
            println!("registry  running   pid {pid} on {}", redact(&prev.registry_url));
            (prev.registry_url.clone(), prev.registry_admin.clone(), pid)
        }
        _ => {
            let port = if config.registry_port == 0 { free_port()? } else { config.registry_port };
            // Writes need credentials: the stages register as `streamscore` (writer), deletes
            // and config changes need `admin`; both passwords are new at every start.
            let (users, writer, admin) = registry_credentials(&dir)?;
            let mut command = Command::new(std::env::current_exe()?);
            command.args(["registry", "--bootstrap", &bootstrap, "--listen", &format!("127.0.0.1:{port}")]);
            command.arg("--users-file").arg(&users);
            let pid = spawn_daemon(command, &dir.join("registry.log"), &dir.join("registry.pid"))?;
            println!(
                "registry  started   pid {pid} on http://127.0.0.1:{port} (state in topic _schemas; writes need the credentials in stack.env)"
            );
            (format!("http://{writer}@127.0.0.1:{port}"), Some(admin), pid)
        }
    };
    wait_http_ok(&format!("{registry_url}/subjects"), Duration::from_secs(60))
        .await
        .with_context(|| format!("registry log: {}", dir.join("registry.log").display()))?;

    // Schemas.
    for (subject, id) in crate::demo::register_contracts(&registry_url).await? {
        println!("schema    {subject:<32} id {id}");
    }

    let addrs = StackAddrs { bootstrap, registry_url, registry_admin };
    let (key_file, head_dir) = audit_paths(&dir)?;
    let env = format!(
        "{}STREAMSCORE_BROKER_PID={broker_pid}\nSTREAMSCORE_REGISTRY_PID={registry_pid}\n\
         STREAMSCORE_AUDIT_KEY_FILE={}\nSTREAMSCORE_AUDIT_HEAD_DIR={}\n",
        addrs.env_file(),
        key_file.display(),
        head_dir.display()
    );
    write_private(&dir.join("stack.env"), &env)?;
    println!("stack up: export $(cat {})", dir.join("stack.env").display());
    Ok(addrs)
}

/// Stops the registry and the broker, if running.
pub fn down(data_dir: &Path) -> Result<()> {
    for (name, needle) in [("registry", "registry"), ("tansu", "tansu")] {
        let pid_file = data_dir.join(format!("{name}.pid"));
        match read_pid(&pid_file).filter(|&pid| alive(pid, needle)) {
            Some(pid) => {
                stop(pid, needle)?;
                println!("{name:<9} stopped   pid {pid}");
            }
            None => println!("{name:<9} not running"),
        }
        let _ = fs::remove_file(pid_file);
    }
    Ok(())
}

/// The end of a daemon's log, as `stack status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastWords {
    /// The line a streamscore command logs as it exits (`streamscore <command> exiting: why`).
    Exit(String),
    /// No such line (the process was killed, or crashed): the last line there is, if any.
    Silent { last_line: Option<String> },
}

/// The last exit line of the log at `path` (its last 64 kB, colours stripped), else its last
/// line; `None` when there is no log.
pub fn last_words(path: &Path) -> Option<LastWords> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = strip_ansi(&String::from_utf8_lossy(&tail));
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(exit) = lines.iter().rev().find(|l| l.contains(" exiting: ")) {
        let from = exit.find("streamscore ").unwrap_or(0);
        return Some(LastWords::Exit(exit[from..].to_owned()));
    }
    Some(LastWords::Silent { last_line: lines.last().map(|l| (*l).to_owned()) })
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(pid: u32, needle: &str) -> Result<()> {
    let signal = |sig: &str| Command::new("kill").args([sig, &pid.to_string()]).status();
    signal("-TERM").context("running kill")?;
    let started = Instant::now();
    while alive(pid, needle) {
        if started.elapsed() > Duration::from_secs(10) {
            signal("-KILL")?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Prints what is running, and for what is not, why it stopped (from its log).
pub fn status(data_dir: &Path) -> Result<bool> {
    let addrs = fs::read_to_string(data_dir.join("stack.env")).ok().and_then(|t| StackAddrs::parse_env_file(&t));
    let mut all = true;
    for (name, needle) in [("tansu", "tansu"), ("registry", "registry")] {
        match read_pid(&data_dir.join(format!("{name}.pid"))).filter(|&pid| alive(pid, needle)) {
            Some(pid) => println!("{name:<9} running   pid {pid}"),
            None => {
                all = false;
                let log = data_dir.join(format!("{name}.log"));
                match last_words(&log) {
                    Some(LastWords::Exit(line)) => println!("{name:<9} not running: {line}"),
                    Some(LastWords::Silent { last_line }) => println!(
                        "{name:<9} not running: no exit reason in {} (killed by a signal, or crashed){}",
                        log.display(),
                        last_line.map(|l| format!("; its last line: {l}")).unwrap_or_default()
                    ),
                    None => println!("{name:<9} not running"),
                }
            }
        }
    }
    if let Some(addrs) = addrs {
        println!("bootstrap {}\nregistry  {}", addrs.bootstrap, redact(&addrs.registry_url));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_words_are_the_exit_line_else_the_last_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("registry.log");
        assert_eq!(last_words(&log), None, "no log");
        fs::write(
            &log,
            "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m schema registered subject=a\n\
             2026-01-01T00:00:01Z ERROR streamscore: streamscore registry exiting: opening the registry's topic: x\n\
             \n",
        )
        .expect("write");
        assert_eq!(
            last_words(&log),
            Some(LastWords::Exit("streamscore registry exiting: opening the registry's topic: x".to_owned()))
        );
        fs::write(&log, "\u{1b}[32m INFO\u{1b}[0m schema registered subject=a\n").expect("write");
        assert_eq!(
            last_words(&log),
            Some(LastWords::Silent { last_line: Some("INFO schema registered subject=a".to_owned()) })
        );
        fs::write(&log, "").expect("write");
        assert_eq!(last_words(&log), Some(LastWords::Silent { last_line: None }));
    }
}
