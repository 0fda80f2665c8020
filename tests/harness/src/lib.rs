//! Throwaway servers for tests (PostgreSQL, ZooKeeper, etcd), started from the machine's
//! installed binaries on free loopback ports in temporary directories: one per test binary,
//! shared by its tests, and gone when the test process exits (each server runs under a small
//! shell guard that stops it, and removes its directory, when the test process's end of a pipe
//! closes).
//!
//! [`Proxy`] stands between a client and a server to cut the network between them;
//! [`netns`] puts servers and processes on hosts of their own (network namespaces) whose links a
//! test cuts and degrades as real networks fail; `receiver` (feature `receiver`) is the webhook
//! receiver tasks run against, which records every run.
//!
//! A server that cannot be started fails the test with a message saying how to install it
//! (`bash scripts/install-deps.sh`); nothing is skipped silently.

pub mod netns;
#[cfg(feature = "receiver")]
pub mod receiver;
#[cfg(feature = "tls")]
pub mod tls;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const INSTALL: &str =
    "run `bash scripts/install-deps.sh` (it installs the Debian packages the tests need)";

/// A running PostgreSQL server.
pub struct Postgres {
    /// Port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    databases: AtomicU64,
    _guard: Mutex<Child>,
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command, run as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn temp_dir(kind: &str) -> PathBuf {
    temp_dir_in(&std::env::temp_dir(), kind)
}

/// A temporary directory in memory (`/dev/shm`) where the machine has one: for servers that
/// cannot be told to skip fsync, so that tests do not wait on the disk.
fn memory_dir(kind: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    temp_dir_in(if shm.is_dir() { shm } else { Path::new("/tmp") }, kind)
}

fn temp_dir_in(base: &Path, kind: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = base.join(format!(
        "rota-{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

/// Runs `script` under `sh`, which also waits for its standard input to close, then runs
/// `cleanup`. The returned child's stdin is kept open for the life of the test process.
fn guarded(script: &str, cleanup: &str, as_postgres: bool) -> Child {
    let full =
        format!("{script} & pid=$!; cat >/dev/null; kill $pid 2>/dev/null; wait $pid; {cleanup}");
    let mut c = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &full]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &full]);
        c
    };
    c.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start a server guard ({e}); {INSTALL}"))
}

fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool, log: &Path) {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > deadline {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not start within {deadline:?}; its log:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("postgres").exists() && p.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries under /usr/lib/postgresql; {INSTALL}")
    })
}

/// The PostgreSQL server of this test binary, started on first use. It skips fsync (tests need
/// no durability); see [`durable_postgres`] for one that runs as a user's would.
pub fn postgres() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(|| start_postgres(false))
}

/// A PostgreSQL server of the caller's own (not shared with the binary's other tests), for a
/// test that freezes it ([`Postgres::freeze`]).
pub fn private_postgres() -> Postgres {
    start_postgres(false)
}

/// A new PostgreSQL server with PostgreSQL's default settings (fsync and synchronous commit on),
/// as a production database runs: for benchmarks, whose figures must not hide the disk.
pub fn durable_postgres() -> Postgres {
    start_postgres(true)
}

/// [`durable_postgres`] that also keeps statistics of every statement (`pg_stat_statements`
/// preloaded; a database still needs `CREATE EXTENSION pg_stat_statements`): for measuring what
/// a workload costs the database, statement by statement.
pub fn durable_postgres_with_statements() -> Postgres {
    start_postgres_with_settings(true, "-c shared_preload_libraries=pg_stat_statements", None)
}

/// A PostgreSQL server of its own that accepts TCP connections only over TLS, with the
/// certificate and key of `pki` (local socket connections, for the harness's own tools, stay
/// open).
#[cfg(feature = "tls")]
pub fn tls_postgres(pki: &tls::Pki) -> Postgres {
    start_postgres_with_settings(false, "", Some(pki))
}

fn start_postgres(durable: bool) -> Postgres {
    start_postgres_with_settings(durable, "", None)
}

#[cfg(not(feature = "tls"))]
type PkiRef<'a> = Option<&'a std::convert::Infallible>;
#[cfg(feature = "tls")]
type PkiRef<'a> = Option<&'a tls::Pki>;

/// A new database cluster in `dir/data` (superuser `rota`, trusted), `dir` given to the
/// `postgres` user first when the server is to run as it; the data directory.
fn initdb(bin: &Path, dir: &Path, as_postgres: bool) -> PathBuf {
    if as_postgres {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "cannot give {} to the postgres user",
            dir.display()
        );
    }
    let data = dir.join("data");
    let init = command(&bin.join("initdb"), as_postgres)
        .arg("-D")
        .arg(&data)
        .args(["-U", "rota", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run initdb ({e}); {INSTALL}"));
    assert!(
        init.status.success(),
        "initdb failed:\n{}{}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr)
    );
    data
}

/// A new server: `durable` as a production database runs, else without fsync; `extra`
/// settings (`-c name=value ...`) on top; over TLS with `pki`'s certificate, if given.
fn start_postgres_with_settings(durable: bool, extra: &str, pki: PkiRef<'_>) -> Postgres {
    let bin = postgres_bin();
    let as_postgres = is_root();
    let dir = temp_dir("postgres");
    let data = initdb(&bin, &dir, as_postgres);
    let log = dir.join("log");
    let port = free_port();
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut settings = if durable {
        extra.to_owned()
    } else {
        format!(
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off \
             -c max_connections=200 {extra}"
        )
    };
    #[cfg(feature = "tls")]
    if let Some(pki) = pki {
        // The server reads its key as the user it runs as, and refuses a key others may read.
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).expect("a directory for the server's certificate");
        for (from, to) in [
            (&pki.server_cert, "server.pem"),
            (&pki.server_key, "server.key"),
        ] {
            std::fs::copy(from, tls.join(to)).expect("copy the server's certificate");
        }
        let mut chmod = Command::new("chmod");
        chmod.arg("600").arg(tls.join("server.key"));
        assert!(chmod.status().is_ok_and(|s| s.success()), "chmod the key");
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&tls);
            assert!(chown.status().is_ok_and(|s| s.success()), "chown the key");
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n",
        )
        .expect("write pg_hba.conf");
        settings.push_str(&format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            tls.join("server.pem").display(),
            tls.join("server.key").display()
        ));
    }
    #[cfg(not(feature = "tls"))]
    let _ = pki;
    let script = format!(
        "{} -D {} -p {port} -h 127.0.0.1 -k {} {settings} > {} 2>&1",
        bin.join("postgres").display(),
        data.display(),
        dir.display(),
        log.display()
    );
    let guard = guarded(&script, &format!("rm -rf {}", dir.display()), as_postgres);
    let isready = bin.join("pg_isready");
    wait_until(
        "PostgreSQL",
        Duration::from_secs(30),
        || {
            Command::new(&isready)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "rota",
                    "-d",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        },
        &log,
    );
    Postgres {
        port,
        bin,
        data,
        as_postgres,
        databases: AtomicU64::new(0),
        _guard: Mutex::new(guard),
    }
}

impl Postgres {
    /// Freezes the server (SIGSTOP to the postmaster and every backend): connections stay open
    /// and calls hang, as with a database host that stopped answering. [`Postgres::thaw`]
    /// resumes it.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// Resumes a frozen server.
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, signal: &str) {
        let pid_file = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", pid_file.display()));
        let postmaster: u32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("the postmaster's pid");
        // The postmaster and its children (backends, background processes), from /proc.
        let mut pids = vec![postmaster.to_string()];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: the fields after the last ')'.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let status = Command::new("kill")
            .arg(signal)
            .args(&pids)
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pids:?} failed");
    }

    /// URL of database `name` as the superuser `rota`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://rota@127.0.0.1:{}/{name}", self.port)
    }

    /// The rows `sql` returns in the database at `url` (one of this server's), one line each,
    /// columns separated by `|`.
    pub fn query(&self, url: &str, sql: &str) -> String {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args([
            "-X",
            "-A",
            "-t",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ]);
        output_of(&mut psql, "psql")
    }

    /// A new, empty database; its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        createdb(&self.bin, self.as_postgres, "127.0.0.1", self.port, &name);
        self.url(&name)
    }
}

/// Creates database `name` on the server at `host:port`, as the superuser `rota`.
fn createdb(bin: &Path, as_postgres: bool, host: &str, port: u16, name: &str) {
    let mut createdb = command(&bin.join("createdb"), as_postgres);
    createdb.args(["-h", host, "-p", &port.to_string(), "-U", "rota", name]);
    output_of(&mut createdb, "createdb");
}

/// Runs `command` to its end and returns its standard output; panics, with its standard
/// error, unless it succeeded.
pub fn output_of(command: &mut Command, what: &str) -> String {
    let out = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(mut guard) = self._guard.lock() {
            if let Some(stdin) = guard.stdin.as_mut() {
                let _ = stdin.flush();
            }
            drop(guard.stdin.take());
        }
    }
}

/// A throwaway server process on a loopback port, killed when dropped.
pub struct LocalServer {
    /// Port on 127.0.0.1 (etcd's: the client port).
    pub port: u16,
    _guard: Mutex<Child>,
}

impl LocalServer {
    /// `127.0.0.1:port`: ZooKeeper's connect string, etcd's client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A running ZooKeeper server (standalone).
pub type ZooKeeper = LocalServer;

/// The ZooKeeper server of this test binary, started on first use.
pub fn zookeeper() -> &'static ZooKeeper {
    static SERVER: OnceLock<ZooKeeper> = OnceLock::new();
    SERVER.get_or_init(|| start_zookeeper(Duration::from_secs(60)))
}

/// A ZooKeeper server of its own that grants sessions of at most `max_session` (its
/// `maxSessionTimeout`), whatever a client asks for; stopped when the test process exits.
pub fn zookeeper_capped(max_session: Duration) -> ZooKeeper {
    start_zookeeper(max_session)
}

fn start_zookeeper(max_session: Duration) -> ZooKeeper {
    let jar = Path::new("/usr/share/java/zookeeper.jar");
    if !jar.exists() {
        panic!("no ZooKeeper at {}; {INSTALL}", jar.display());
    }
    let dir = temp_dir("zookeeper");
    let port = free_port();
    let config = dir.join("zoo.cfg");
    std::fs::write(
        &config,
        format!(
            "tickTime=250\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=ruok\nminSessionTimeout=500\n\
             maxSessionTimeout={}\nforceSync=no\n",
            dir.join("data").display(),
            max_session.as_millis()
        ),
    )
    .expect("write zoo.cfg");
    let log = dir.join("log");
    let script = format!(
        "java -Xmx256m -cp /etc/zookeeper/conf:{} org.apache.zookeeper.server.quorum.QuorumPeerMain {} > {} 2>&1",
        jar.display(),
        config.display(),
        log.display()
    );
    let guard = guarded(&script, &format!("rm -rf {}", dir.display()), false);
    let local = std::net::Ipv4Addr::LOCALHOST;
    wait_until(
        "ZooKeeper",
        Duration::from_secs(60),
        || ruok(local, port),
        &log,
    );
    ZooKeeper {
        port,
        _guard: Mutex::new(guard),
    }
}

/// ZooKeeper's four-letter health check.
fn ruok(addr: std::net::Ipv4Addr, port: u16) -> bool {
    use std::io::Read;
    let target = std::net::SocketAddr::from((addr, port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"ruok").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer == "imok"
}

/// A running etcd server (one member).
pub type Etcd = LocalServer;

/// The etcd server of this test binary, started on first use.
pub fn etcd() -> &'static Etcd {
    static SERVER: OnceLock<Etcd> = OnceLock::new();
    SERVER.get_or_init(start_etcd)
}

const ETCD: &str = "/usr/bin/etcd";

/// The shell command running etcd member `name` of the cluster `initial` (`name=peer-url,...`),
/// its data in `dir`.
fn etcd_command(name: &str, dir: &Path, port: u16, peer: u16, initial: &str) -> String {
    if !Path::new(ETCD).exists() {
        panic!("no etcd at {ETCD}; {INSTALL}");
    }
    format!(
        "{ETCD} --name {name} --data-dir {data} --listen-client-urls http://127.0.0.1:{port} \
         --advertise-client-urls http://127.0.0.1:{port} --listen-peer-urls http://127.0.0.1:{peer} \
         --initial-advertise-peer-urls http://127.0.0.1:{peer} --initial-cluster {initial} \
         --initial-cluster-state new --logger zap --log-level warn >> {log} 2>&1",
        data = dir.join(format!("{name}.data")).display(),
        log = dir.join(format!("{name}.log")).display(),
    )
}

/// Whether the etcd member serving clients on `port` reports itself healthy (it has a leader).
fn etcd_healthy(port: u16) -> bool {
    http_get(port, "/health").is_some_and(|body| body.contains("\"health\":\"true\""))
}

fn start_etcd() -> Etcd {
    // etcd 3.4 always fsyncs (ZooKeeper here runs with forceSync=no, PostgreSQL with
    // fsync=off): keep its data in memory instead.
    let dir = memory_dir("etcd");
    let (port, peer) = (free_port(), free_port());
    let initial = format!("rota-test=http://127.0.0.1:{peer}");
    let script = etcd_command("rota-test", &dir, port, peer, &initial);
    let guard = guarded(&script, &format!("rm -rf {}", dir.display()), false);
    wait_until(
        "etcd",
        Duration::from_secs(60),
        || etcd_healthy(port),
        &dir.join("rota-test.log"),
    );
    Etcd {
        port,
        _guard: Mutex::new(guard),
    }
}

/// An etcd server of its own that serves clients only over TLS with the certificate of `pki`,
/// and only clients with a certificate its authority signed.
#[cfg(feature = "tls")]
pub fn tls_etcd(pki: &tls::Pki) -> Etcd {
    let dir = memory_dir("etcd-tls");
    let (port, peer) = (free_port(), free_port());
    let initial = format!("rota-tls=http://127.0.0.1:{peer}");
    let plain = etcd_command("rota-tls", &dir, port, peer, &initial);
    let script = plain.replace(
        &format!(
            "--listen-client-urls http://127.0.0.1:{port} --advertise-client-urls \
             http://127.0.0.1:{port}"
        ),
        &format!(
            "--listen-client-urls https://127.0.0.1:{port} --advertise-client-urls \
             https://127.0.0.1:{port} --cert-file {} --key-file {} --trusted-ca-file {} \
             --client-cert-auth",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
    );
    assert_ne!(
        script, plain,
        "the etcd command line changed: update tls_etcd"
    );
    let guard = guarded(&script, &format!("rm -rf {}", dir.display()), false);
    // No plain-HTTP health check over TLS: wait until it accepts connections.
    wait_until(
        "etcd with TLS",
        Duration::from_secs(60),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        &dir.join("rota-tls.log"),
    );
    Etcd {
        port,
        _guard: Mutex::new(guard),
    }
}

/// A cluster of etcd members whose members a test can stop and start again (keeping their
/// data), for rolling restarts. Each call makes a new cluster, gone when it is dropped or the
/// test process exits.
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<EtcdMember>,
    initial: String,
    _cleanup: Mutex<Child>,
}

struct EtcdMember {
    name: String,
    port: u16,
    peer: u16,
    guard: Mutex<Option<Child>>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one is healthy.
    pub fn start(size: usize) -> EtcdCluster {
        let dir = memory_dir("etcd-cluster");
        let members: Vec<EtcdMember> = (0..size)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                port: free_port(),
                peer: free_port(),
                guard: Mutex::new(None),
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        // Removes the members' data when the test process exits (members stop on their own).
        let cleanup = guarded("true", &format!("rm -rf {}", dir.display()), false);
        let cluster = EtcdCluster {
            dir,
            members,
            initial,
            _cleanup: Mutex::new(cleanup),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// Every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect()
    }

    /// Stops member `i` (as SIGTERM does) and waits until it has exited.
    pub fn stop(&self, i: usize) {
        let child = self.members[i]
            .guard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = child {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it is healthy.
    pub fn restart(&self, i: usize) {
        self.spawn(i);
        self.wait_healthy(i);
    }

    fn spawn(&self, i: usize) {
        let m = &self.members[i];
        let script = etcd_command(&m.name, &self.dir, m.port, m.peer, &self.initial);
        let child = guarded(&script, "true", false);
        *m.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let m = &self.members[i];
        let log = self.dir.join(format!("{}.log", m.name));
        wait_until(
            "an etcd member",
            Duration::from_secs(60),
            || etcd_healthy(m.port),
            &log,
        );
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}

/// The body of a plain HTTP GET on 127.0.0.1, if it answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// A TCP proxy on 127.0.0.1 in front of a server, which a test can cut off (a network partition
/// for the clients that connect through it) and reconnect.
pub struct Proxy {
    /// The port clients connect to instead of the server's.
    pub port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

#[derive(Default)]
struct ProxyShared {
    partitioned: std::sync::atomic::AtomicBool,
    connections: Mutex<Vec<std::net::TcpStream>>,
}

impl Proxy {
    /// A proxy forwarding to `target` on 127.0.0.1.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = std::sync::Arc::new(ProxyShared::default());
        let accept = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if accept.partitioned.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                {
                    let mut open = accept.connections.lock().unwrap_or_else(|e| e.into_inner());
                    open.push(c3);
                    open.push(s3);
                }
                pipe(client, server);
                pipe(s2, c2);
            }
        });
        Proxy { port, shared }
    }

    /// The address clients use (`127.0.0.1:port`).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts every open connection and refuses new ones until [`Proxy::heal`].
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::SeqCst);
        let mut open = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread until either side closes, then closes both.
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
