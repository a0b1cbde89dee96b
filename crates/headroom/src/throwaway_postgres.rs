//! A throwaway PostgreSQL server for the tests and the load tool's
//! baselines: `initdb` into a fresh
//! temporary directory, the postmaster on a free port of 127.0.0.1 with trust
//! authentication, removed again when dropped.
//!
//! The server binaries come from Debian's `postgresql` package
//! (`/usr/lib/postgresql/<version>/bin`, the highest version); `PATH` is not
//! consulted. When they are missing, or the server does not come up, the test
//! fails: a test that needs PostgreSQL never silently skips.
//!
//! PostgreSQL refuses to run as root. When the tests do, `initdb` and
//! `postgres` run as the unprivileged user `nobody` through `runuser`
//! (util-linux), and the temporary directory belongs to `nobody`.
//!
//! Only the standard library is used.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The superuser `initdb` creates; every connection uses it.
pub const USER: &str = "headroom";

/// The database every cluster has from the start.
pub const DATABASE: &str = "postgres";

/// Where Debian installs each major version's server binaries.
const DEBIAN_VERSIONS: &str = "/usr/lib/postgresql";

/// How often readiness and shutdown are polled.
const POLL: Duration = Duration::from_millis(20);

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a fast shutdown may take before the postmaster is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many ports `start` tries when the chosen one is taken in the meantime.
const PORT_ATTEMPTS: usize = 5;

/// Log lines shown when the server fails.
const LOG_TAIL_LINES: usize = 40;

/// Tells apart the directories of the servers one test process starts.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A PostgreSQL server of its own, listening on `127.0.0.1:`[`port`](Postgres::port)
/// with trust authentication for the superuser [`USER`]. Dropping it stops the
/// server and removes its temporary directory.
pub struct Postgres {
    /// `/usr/lib/postgresql/<version>/bin`.
    bin: PathBuf,
    /// The temporary directory: `data/`, `socket/` and `server.log`.
    root: PathBuf,
    port: u16,
    /// The account the server runs as when the tests run as root.
    run_as: Option<Account>,
    /// The running server, if any.
    server: Option<Running>,
}

/// A started postmaster.
struct Running {
    /// The process spawned: the postmaster itself, or `runuser` waiting for it.
    child: Child,
    /// The postmaster's pid from `postmaster.pid`, known once it is ready.
    postmaster: Option<u32>,
}

/// An unprivileged local account.
#[derive(Clone, Debug)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

impl Postgres {
    /// Creates a cluster in a fresh temporary directory, starts it on a free
    /// port and returns once it accepts connections.
    ///
    /// Panics (failing the test) when the PostgreSQL server binaries are not
    /// installed, or when `initdb` or the server fail; the server's log tail is
    /// part of the message.
    pub fn start() -> Postgres {
        let bin = server_binaries();
        let run_as = if running_as_root() { Some(unprivileged_account()) } else { None };
        let root = fresh_directory(&base_directory(run_as.is_some()));
        // From here on, `Drop` stops whatever runs and removes the directory.
        let mut postgres = Postgres { bin, root, port: 0, run_as, server: None };
        std::fs::create_dir(postgres.socket_directory()).expect("creating the PostgreSQL socket directory");
        File::create(postgres.log_path()).expect("creating the PostgreSQL log file");
        if let Some(account) = &postgres.run_as {
            chown_tree(&postgres.root, account);
        }
        postgres.initdb();
        for attempt in 1..=PORT_ATTEMPTS {
            postgres.port = free_port();
            let logged_before = postgres.log_length();
            postgres.launch();
            match postgres.await_ready() {
                Ok(()) => return postgres,
                // Another process took the port between our probe and the bind.
                Err(_) if attempt < PORT_ATTEMPTS && postgres.port_was_taken(logged_before) => postgres.stop(),
                Err(problem) => postgres.fail(&problem),
            }
        }
        unreachable!("every attempt either returns or panics")
    }

    /// The URL to connect with, e.g. `postgres://headroom@127.0.0.1:54321/postgres`
    /// (understood by the `postgres` and `tokio-postgres` crates and by libpq).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The TCP port on 127.0.0.1; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Fast shutdown: SIGINT to the postmaster (open transactions are rolled
    /// back, committed ones are durable), then waits for it to exit. After
    /// [`STOP_TIMEOUT`] it is killed. Does nothing when the server is not running.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else { return };
        if let Ok(Some(_)) = server.child.try_wait() {
            return; // It has already exited (and is now reaped).
        }
        // Through `runuser` the spawned process is not the postmaster: signal
        // the postmaster itself, by the pid it wrote.
        let target = server.postmaster.or_else(|| self.postmaster_pid(false)).unwrap_or(server.child.id());
        signal("INT", target);
        let deadline = now() + STOP_TIMEOUT;
        loop {
            match server.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if now() < deadline => std::thread::sleep(POLL),
                Ok(None) => break,
                Err(error) => {
                    eprintln!("postgres: waiting for the server to stop failed: {error}");
                    break;
                }
            }
        }
        eprintln!("postgres: the server did not stop within {STOP_TIMEOUT:?}; killing it");
        signal("KILL", target);
        let _ = server.child.kill();
        let _ = server.child.wait();
    }

    /// Starts the stopped server again: same data directory, same port; returns
    /// once it accepts connections. Panics when it is already running or does
    /// not come up.
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "start_again: the PostgreSQL server is still running; stop it first");
        self.launch();
        if let Err(problem) = self.await_ready() {
            self.fail(&problem);
        }
    }

    /// [`stop`](Postgres::stop), then [`start_again`](Postgres::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Runs `sql` through `psql` as [`USER`] on [`DATABASE`] and returns its
    /// output, trimmed: unaligned, tuples only (`select 1` gives `"1"`; columns
    /// are separated by `|`, rows by newlines). Stops at the first error and
    /// panics with psql's message.
    pub fn psql(&self, sql: &str) -> String {
        let psql = [self.bin.join("psql"), PathBuf::from("/usr/bin/psql")]
            .into_iter()
            .find(|path| path.is_file())
            .unwrap_or_else(|| panic!("psql is not installed; install the Debian package `postgresql`"));
        let port = self.port.to_string();
        let output = Command::new(&psql)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port, "-U", USER])
            .args(["-d", DATABASE, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("running {}: {error}", psql.display()));
        assert!(
            output.status.success(),
            "psql failed ({}) on {sql:?}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("psql's output is UTF-8").trim().to_string()
    }

    fn data_directory(&self) -> PathBuf {
        self.root.join("data")
    }

    fn socket_directory(&self) -> PathBuf {
        self.root.join("socket")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// A command running one of the server binaries, as the unprivileged
    /// account when there is one.
    fn server_command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(account) => {
                let mut command = Command::new(runuser());
                command.args(["-u", &account.name, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        // The caller's working directory may be closed to the account.
        command.current_dir(&self.root).stdin(Stdio::null());
        command
    }

    /// Creates the cluster: superuser [`USER`], trust authentication, UTF8.
    fn initdb(&self) {
        let output = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_directory())
            .args(["-U", USER, "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"])
            .output()
            .expect("running initdb");
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Spawns the postmaster, its output appended to `server.log`.
    fn launch(&mut self) {
        let log = OpenOptions::new().append(true).open(self.log_path()).expect("opening the PostgreSQL log file");
        let child = self
            .server_command("postgres")
            .arg("-D")
            .arg(self.data_directory())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.socket_directory())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            .args(["-c", "shared_buffers=128MB"])
            // Tests check durability: keep the defaults that provide it.
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on"])
            .args(["-c", "logging_collector=off"])
            .stdout(log.try_clone().expect("duplicating the PostgreSQL log file handle"))
            .stderr(log)
            .spawn()
            .expect("spawning postgres");
        self.server = Some(Running { child, postmaster: None });
    }

    /// Polls until the server accepts connections on its port and its
    /// `postmaster.pid` says ready, remembering the postmaster's pid.
    fn await_ready(&mut self) -> Result<(), String> {
        let pg_isready = self.bin.join("pg_isready");
        let port = self.port.to_string();
        let deadline = now() + START_TIMEOUT;
        loop {
            let server = self.server.as_mut().expect("a server was launched");
            match server.child.try_wait() {
                Ok(Some(status)) => {
                    self.server = None;
                    return Err(format!("the PostgreSQL server exited ({status}) while starting"));
                }
                Ok(None) => {}
                Err(error) => return Err(format!("checking on the PostgreSQL server failed: {error}")),
            }
            let accepting = Command::new(&pg_isready)
                .args(["-q", "-t", "1", "-h", "127.0.0.1", "-p", &port, "-U", USER, "-d", DATABASE])
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|error| panic!("running {}: {error}", pg_isready.display()))
                .success();
            // The pid file tells our server from another that answers on the port.
            if accepting && let Some(pid) = self.postmaster_pid(true) {
                self.server.as_mut().expect("a server was launched").postmaster = Some(pid);
                return Ok(());
            }
            if now() >= deadline {
                return Err(format!("the PostgreSQL server did not accept connections within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The postmaster's pid from `<data>/postmaster.pid` when the file is this
    /// cluster's and for this port (and, if `ready`, says the server is ready).
    fn postmaster_pid(&self, ready: bool) -> Option<u32> {
        let contents = std::fs::read_to_string(self.data_directory().join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = contents.lines().map(str::trim).collect();
        let pid = lines.first()?.parse().ok()?;
        let ours = lines.get(1).is_some_and(|directory| Path::new(directory) == self.data_directory())
            && lines.get(3).is_some_and(|port| port.parse() == Ok(self.port));
        // Line 8 is the status ("starting", "ready", "stopping") since PostgreSQL 10.
        let is_ready = lines.get(7).is_none_or(|status| *status == "ready");
        (ours && (is_ready || !ready)).then_some(pid)
    }

    /// How many bytes the server's log has.
    fn log_length(&self) -> usize {
        std::fs::metadata(self.log_path()).map_or(0, |metadata| metadata.len() as usize)
    }

    /// Whether the log, from byte `since` on, says the postmaster could not bind its port.
    fn port_was_taken(&self, since: usize) -> bool {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let recent = String::from_utf8_lossy(log.get(since..).unwrap_or_default());
        recent.contains("could not bind") || recent.contains("Address already in use")
    }

    /// Panics with `problem` and the tail of the server's log (`Drop` cleans up).
    fn fail(&self, problem: &str) -> ! {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        panic!("{problem} (port {}, directory {}); end of its log:\n{tail}", self.port, self.root.display());
    }
}

impl Drop for Postgres {
    /// Stops the server and removes its temporary directory.
    fn drop(&mut self) {
        self.stop();
        if let Err(error) = std::fs::remove_dir_all(&self.root) {
            eprintln!("postgres: removing {} failed: {error}", self.root.display());
        }
    }
}

/// The bin directory of the highest PostgreSQL version Debian's packages put
/// under `/usr/lib/postgresql` that has `initdb`, `postgres` and `pg_isready`.
fn server_binaries() -> PathBuf {
    let complete = |bin: &Path| ["initdb", "postgres", "pg_isready"].iter().all(|program| bin.join(program).is_file());
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(DEBIAN_VERSIONS)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.split('.').map(|part| part.parse().ok()).collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "the PostgreSQL server binaries (initdb, postgres, pg_isready) are not installed under \
             {DEBIAN_VERSIONS}/<version>/bin; install the Debian package `postgresql` \
             (scripts/test.sh does: apt-get install postgresql)"
        ),
    }
}

/// Whether this process's effective uid is 0, from `/proc/self/status` (or `id -u`).
fn running_as_root() -> bool {
    let from_proc = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        // "Uid:	real	effective	saved	filesystem"
        let line = status.lines().find(|line| line.starts_with("Uid:"))?;
        line.split_whitespace().nth(2)?.parse::<u32>().ok()
    });
    let uid = from_proc.unwrap_or_else(|| {
        let output = Command::new("id").arg("-u").output().expect("running `id -u` to learn the effective uid");
        String::from_utf8_lossy(&output.stdout).trim().parse().expect("`id -u` prints a number")
    });
    uid == 0
}

/// `nobody`, with its uid and gid from `/etc/passwd`.
fn unprivileged_account() -> Account {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd to find the user nobody");
    let fields: Vec<&str> = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"nobody") && fields.len() >= 4)
        .expect("the user nobody in /etc/passwd (PostgreSQL refuses to run as root)");
    Account {
        name: "nobody".to_string(),
        uid: fields[2].parse().expect("nobody's uid in /etc/passwd is a number"),
        gid: fields[3].parse().expect("nobody's gid in /etc/passwd is a number"),
    }
}

/// util-linux's `runuser`.
fn runuser() -> &'static str {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser", "/bin/runuser"]
        .into_iter()
        .find(|path| Path::new(path).is_file())
        .expect("runuser (Debian package util-linux), to run PostgreSQL as nobody since the tests run as root")
}

/// Where the temporary directories go: [`std::env::temp_dir`], unless the
/// server runs as another user who could not reach it; then `/tmp`.
fn base_directory(other_user: bool) -> PathBuf {
    let base = std::env::temp_dir();
    if !other_user || traversable_by_all(&base) {
        return base;
    }
    let tmp = PathBuf::from("/tmp");
    assert!(
        traversable_by_all(&tmp),
        "neither {} nor /tmp can be entered by nobody, who runs PostgreSQL when the tests run as root",
        base.display()
    );
    tmp
}

/// Whether every directory from `/` down to `path` lets others through.
fn traversable_by_all(path: &Path) -> bool {
    path.ancestors().all(|directory| {
        std::fs::metadata(directory).is_ok_and(|metadata| metadata.is_dir() && metadata.mode() & 0o001 != 0)
    })
}

/// Creates `<base>/headroom-postgres-<pid>-<counter>-<nanoseconds>`, private (0700).
fn fresh_directory(base: &Path) -> PathBuf {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    #[allow(clippy::disallowed_methods)] // Test scaffolding, not the product's clock: only makes a name unique.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or_default();
    let path = base.join(format!("headroom-postgres-{}-{count}-{nanos}", std::process::id()));
    std::fs::create_dir(&path).unwrap_or_else(|error| panic!("creating {}: {error}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|error| panic!("making {} private: {error}", path.display()));
    path
}

/// Gives `path` and everything under it to `account` (symbolic links are not followed).
fn chown_tree(path: &Path, account: &Account) {
    std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))
        .unwrap_or_else(|error| panic!("giving {} to {}: {error}", path.display(), account.name));
    let metadata =
        std::fs::symlink_metadata(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path).unwrap_or_else(|error| panic!("listing {}: {error}", path.display())) {
            chown_tree(&entry.unwrap_or_else(|error| panic!("listing {}: {error}", path.display())).path(), account);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

/// Sends `SIG<name>` to `pid` (failures, e.g. an already exited process, are ignored).
fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The monotonic clock, for the start and stop deadlines.
#[allow(clippy::disallowed_methods)] // Test scaffolding, not the product's clock: bounds waits on a real server.
fn now() -> Instant {
    Instant::now()
}
