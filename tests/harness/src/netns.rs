//! Hosts on one machine, for tests of what crosses a network: each host is a Linux network
//! namespace with one address on a bridge that joins them all (the test process sits on the
//! bridge too, at [`Network::gateway`], so it reaches every host and every host reaches it).
//!
//! A link between two hosts can be **cut** (every packet between them dropped, both ways,
//! silently: nobody is told, connections hang and new ones time out, as behind a failed switch
//! or a partitioned rack) or made **lossy** (a share of the packets dropped at random, so TCP
//! retransmits with growing pauses and what crosses the link arrives late), then **healed**.
//! [`Network::isolate`] cuts a host from everyone. The kernel's `netem` queueing discipline,
//! which delays packets outright, is not in every kernel (the test machines' have none), so a
//! slow link here is a lossy one.
//!
//! [`NsPostgres`] and [`NsZooKeeper`] run servers on hosts of their own, and stop and start
//! them again on their data (a crash and a restart).
//!
//! Needs root, iproute2 (`ip`) and iptables; `bash scripts/install-deps.sh` installs both, and a
//! test without them fails saying so. Everything a network made is removed when it is dropped,
//! or when the test process exits however it ends: a guard process kills whatever still runs on
//! its hosts, deletes them and the bridge, and removes the servers' directories.

use crate::{
    INSTALL, command, createdb, guarded, initdb, is_root, postgres_bin, ruok, temp_dir, wait_until,
};
use std::ffi::OsStr;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The port PostgreSQL listens on, on its host.
pub const POSTGRES_PORT: u16 = 5432;
/// The port ZooKeeper listens on, on its host.
pub const ZOOKEEPER_PORT: u16 = 2181;

/// Hosts joined by a bridge, and the faults on the links between them.
pub struct Network {
    /// Every host's namespace is named `<prefix>-<host>`.
    prefix: String,
    bridge: String,
    /// The first three octets of the network's /24.
    subnet: [u8; 3],
    /// The servers' directories.
    dir: PathBuf,
    hosts: Mutex<u8>,
    rules: Mutex<Vec<Rule>>,
    guard: Mutex<Option<Child>>,
}

/// One host: a network namespace with one address.
#[derive(Clone, Debug)]
pub struct Host {
    /// The name the test gave it.
    pub name: String,
    /// Its address on the network.
    pub addr: Ipv4Addr,
    namespace: String,
}

/// A packet filter rule in a host's namespace: what [`Network::heal`] takes away again.
#[derive(Clone, Debug)]
struct Rule {
    namespace: String,
    /// The other end of the link, or `None` for every other host.
    peer: Option<Ipv4Addr>,
    /// The rule as `iptables -A` takes it (the chain first).
    spec: Vec<String>,
}

/// Runs a command that must succeed, failing the test with its error output otherwise.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); {INSTALL}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Network {
    /// A new network with no hosts yet: its bridge, and the test process's address on it.
    pub fn new() -> Network {
        assert!(
            is_root(),
            "network namespaces need root: run the tests as root (CI does), e.g. with sudo"
        );
        for tool in ["ip", "iptables"] {
            let found = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(found, "no `{tool}` on this machine; {INSTALL}");
        }
        static NETWORKS: AtomicU64 = AtomicU64::new(0);
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("rota{pid}n{n}");
        // Interface names have at most 15 bytes: `rb<pid>n<n>` and `...h<host>` fit.
        let bridge = format!("rb{}n{n}", pid % 100_000);
        let subnet = free_subnet(pid, n);
        let dir = temp_dir("netns");
        // The guard first, so that whatever follows is undone however the test ends.
        let cleanup = format!(
            "for ns in $(ip netns list | awk '{{print $1}}' | grep '^{prefix}-'); do \
               ip netns pids $ns | xargs -r kill -9; ip netns del $ns; done; \
             ip link del {bridge} 2>/dev/null; rm -rf {}",
            dir.display()
        );
        let guard = guarded("true", &cleanup, false);
        let network = Network {
            prefix,
            bridge,
            subnet,
            dir,
            hosts: Mutex::new(0),
            rules: Mutex::new(Vec::new()),
            guard: Mutex::new(Some(guard)),
        };
        let bridge = network.bridge.as_str();
        run("ip", &["link", "add", bridge, "type", "bridge"]);
        let gateway = format!("{}/24", network.gateway());
        run("ip", &["addr", "add", &gateway, "dev", bridge]);
        run("ip", &["link", "set", bridge, "up"]);
        network
    }

    /// The test process's address on the network.
    pub fn gateway(&self) -> Ipv4Addr {
        self.address(1)
    }

    /// The network as `a.b.c.0/24`, for servers that list the networks they admit.
    pub fn cidr(&self) -> String {
        format!("{}/24", self.address(0))
    }

    fn address(&self, last: u8) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, last)
    }

    /// A new host named `name` (letters, digits and `-`), up and reachable from every other.
    pub fn host(&self, name: &str) -> Host {
        let index = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            *hosts += 1;
            assert!(*hosts < 250, "a network holds at most 249 hosts");
            *hosts
        };
        let host = Host {
            name: name.to_owned(),
            addr: self.address(index + 1),
            namespace: format!("{}-{name}", self.prefix),
        };
        let ns = host.namespace.as_str();
        let outer = format!("{}h{index}", self.bridge);
        run("ip", &["netns", "add", ns]);
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        run("ip", &["link", "set", &outer, "master", &self.bridge]);
        run("ip", &["link", "set", &outer, "up"]);
        let addr = format!("{}/24", host.addr);
        run("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
        run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        host
    }

    /// Cuts the link between `a` and `b`: every packet between them is dropped, both ways,
    /// and neither is told.
    pub fn cut(&self, a: &Host, b: &Host) {
        self.drop_packets(a, Some(b.addr), None);
    }

    /// Makes the link between `a` and `b` lossy: each packet, either way, is dropped with
    /// probability `share`.
    pub fn lossy(&self, a: &Host, b: &Host, share: f64) {
        assert!(share > 0.0 && share < 1.0, "a share of packets: {share}");
        self.drop_packets(a, Some(b.addr), Some(share));
    }

    /// Cuts `host` from every other host and from the test process.
    pub fn isolate(&self, host: &Host) {
        self.drop_packets(host, None, None);
    }

    /// Rules in `host`'s namespace dropping what it sends to `peer` (everyone if `None`) and
    /// what it receives from it, all of it or a share at random. Filtering at one end covers
    /// both ways.
    fn drop_packets(&self, host: &Host, peer: Option<Ipv4Addr>, share: Option<f64>) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        for (chain, direction) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            let mut spec = vec![chain.to_owned()];
            match peer {
                Some(peer) => spec.extend([direction.to_owned(), format!("{peer}/32")]),
                // Every host: all but the host's own loopback.
                None => spec.extend([
                    if chain == "OUTPUT" { "-o" } else { "-i" }.to_owned(),
                    "eth0".to_owned(),
                ]),
            }
            if let Some(share) = share {
                spec.extend(
                    ["-m", "statistic", "--mode", "random", "--probability"].map(str::to_owned),
                );
                spec.push(format!("{share}"));
            }
            spec.extend(["-j", "DROP"].map(str::to_owned));
            iptables(&host.namespace, "-A", &spec);
            rules.push(Rule {
                namespace: host.namespace.clone(),
                peer,
                spec,
            });
        }
    }

    /// Heals the link between `a` and `b` (whatever [`Network::cut`] or [`Network::lossy`] did
    /// to it from `a`'s side).
    pub fn heal(&self, a: &Host, b: &Host) {
        self.remove_rules(|r| r.namespace == a.namespace && r.peer == Some(b.addr));
    }

    /// Heals every link of `host` (what was done from its side).
    pub fn heal_host(&self, host: &Host) {
        self.remove_rules(|r| r.namespace == host.namespace);
    }

    fn remove_rules(&self, matches: impl Fn(&Rule) -> bool) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.retain(|r| {
            if matches(r) {
                iptables(&r.namespace, "-D", &r.spec);
                false
            } else {
                true
            }
        });
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Closing the guard's input runs its cleanup; wait for it, so that the next test
        // starts on a clean machine.
        let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut guard) = guard {
            if let Some(mut stdin) = guard.stdin.take() {
                let _ = stdin.flush();
            }
            let _ = guard.wait();
        }
    }
}

/// `iptables <action> <spec>` in `namespace`, waiting for the table lock if another holds it.
fn iptables(namespace: &str, action: &str, spec: &[String]) {
    let mut args: Vec<&str> = vec!["netns", "exec", namespace, "iptables", "-w", action];
    args.extend(spec.iter().map(String::as_str));
    run("ip", &args);
}

/// A /24 in 10.200.0.0-10.249.255.0 that no interface or route of this machine uses.
fn free_subnet(pid: u32, n: u64) -> [u8; 3] {
    let used = output("ip", &["-4", "addr"]) + &output("ip", &["-4", "route"]);
    (0..12_500u64)
        .map(|i| {
            let k = u64::from(pid) + n * 7_919 + i;
            [10, 200 + (k % 50) as u8, ((k / 50) % 250) as u8]
        })
        .find(|[a, b, c]| !used.contains(&format!("{a}.{b}.{c}.")))
        .expect("a free 10.x.y.0/24 for the test network")
}

impl Host {
    /// `program` run on this host (`ip netns exec <host> program`; the process keeps the pid
    /// the command is given).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace]).arg(program);
        c
    }
}

/// A log file the server appends to, across restarts.
fn log_file(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// A PostgreSQL server on a host of its own, accepting the network's hosts (trust, user
/// `rota`), restartable on its data.
pub struct NsPostgres {
    host: Host,
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    databases: AtomicU64,
    server: Mutex<Option<Child>>,
}

impl NsPostgres {
    /// Initialises a database cluster and starts the server on `host`; returns once it accepts
    /// connections.
    pub fn start(network: &Network, host: &Host) -> NsPostgres {
        let bin = postgres_bin();
        let dir = network.dir.join(format!("postgres-{}", host.name));
        std::fs::create_dir_all(&dir).expect("the server's directory");
        // Root runs it (namespaces need root), and PostgreSQL refuses to run as root.
        let data = initdb(&bin, &dir, true);
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .expect("pg_hba.conf");
        writeln!(hba, "host all all {} trust", network.cidr()).expect("write pg_hba.conf");
        let server = NsPostgres {
            host: host.clone(),
            bin,
            dir,
            data,
            databases: AtomicU64::new(0),
            server: Mutex::new(None),
        };
        server.start_again();
        server
    }

    /// Starts the server again on its data (after [`NsPostgres::crash`]), returning once it
    /// accepts connections (crash recovery done).
    pub fn start_again(&self) {
        let log = self.dir.join("log");
        let child = self
            .host
            .command("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &POSTGRES_PORT.to_string()])
            .args(["-h", &self.host.addr.to_string()])
            .arg("-k")
            .arg(&self.dir)
            // A commit is in the log before it is acknowledged (synchronous_commit on, as in
            // production), so a crash of the server loses nothing it acknowledged; the log is
            // not forced to the disk (fsync off): the machine itself does not crash here.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL ({e}); {INSTALL}"));
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let isready = self.bin.join("pg_isready");
        let addr = self.host.addr.to_string();
        wait_until(
            "PostgreSQL",
            Duration::from_secs(60),
            || {
                Command::new(&isready)
                    .args(["-h", &addr, "-p", &POSTGRES_PORT.to_string()])
                    .args(["-U", "rota", "-d", "postgres", "-t", "2"])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
            &log,
        );
    }

    /// Stops the server as a crash would: every process at once, no checkpoint, connections
    /// dropped (`pg_ctl stop -m immediate`); the next start recovers from the log.
    pub fn crash(&self) {
        let child = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut child) = child else { return };
        let stopped = command(&self.bin.join("pg_ctl"), true)
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// URL of database `name` as the superuser `rota`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://rota@{}:{POSTGRES_PORT}/{name}", self.host.addr)
    }

    /// A new, empty database; its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let host = self.host.addr.to_string();
        createdb(&self.bin, false, &host, POSTGRES_PORT, &name);
        self.url(&name)
    }
}

impl Drop for NsPostgres {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A standalone ZooKeeper server on a host of its own, restartable on its data (sessions
/// included: ZooKeeper restores them from its log and gives each its timeout afresh).
pub struct NsZooKeeper {
    host: Host,
    config: PathBuf,
    log: PathBuf,
    server: Mutex<Option<Child>>,
}

impl NsZooKeeper {
    /// Starts a server on `host`; returns once it answers.
    pub fn start(network: &Network, host: &Host) -> NsZooKeeper {
        let jar = std::path::Path::new("/usr/share/java/zookeeper.jar");
        assert!(jar.exists(), "no ZooKeeper at {}; {INSTALL}", jar.display());
        let dir = network.dir.join(format!("zookeeper-{}", host.name));
        std::fs::create_dir_all(&dir).expect("the server's directory");
        let config = dir.join("zoo.cfg");
        std::fs::write(
            &config,
            format!(
                "tickTime=250\ndataDir={}\nclientPort={ZOOKEEPER_PORT}\nclientPortAddress={}\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok\nminSessionTimeout=500\n\
                 maxSessionTimeout=60000\nforceSync=no\n",
                dir.join("data").display(),
                host.addr,
            ),
        )
        .expect("write zoo.cfg");
        let server = NsZooKeeper {
            host: host.clone(),
            config,
            log: dir.join("log"),
            server: Mutex::new(None),
        };
        server.start_again();
        server
    }

    /// The connect string.
    pub fn endpoint(&self) -> String {
        format!("{}:{ZOOKEEPER_PORT}", self.host.addr)
    }

    /// Starts the server again on its data (after [`NsZooKeeper::crash`]).
    pub fn start_again(&self) {
        let child = self
            .host
            .command("java")
            .args([
                "-Xmx256m",
                "-cp",
                "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar",
            ])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log_file(&self.log))
            .stderr(log_file(&self.log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ZooKeeper ({e}); {INSTALL}"));
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let addr = self.host.addr;
        wait_until(
            "ZooKeeper",
            Duration::from_secs(60),
            || ruok(addr, ZOOKEEPER_PORT),
            &self.log,
        );
    }

    /// Kills the server (SIGKILL): connections drop, nothing is flushed but what the operating
    /// system already holds.
    pub fn crash(&self) {
        let child = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NsZooKeeper {
    fn drop(&mut self) {
        self.crash();
    }
}
