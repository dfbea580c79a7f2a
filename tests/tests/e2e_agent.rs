//! End-to-end tests of the host agent, `sg-daemon run` (issue 7), with real traffic
//! between namespaces:
//!
//! 1. lifecycle: the agent reconciles the stored state at start, serves the CLI on its
//!    control socket, stops on SIGTERM, and enforcement (established connections
//!    included) goes on without it and across a restart;
//! 2. SIGKILL in the middle of `create`/`rm`/`apply -f`, through the agent and directly,
//!    under live traffic: enforcement is always exactly the old or the new rule set;
//! 3. atomic rule-set flips under a continuous UDP stream: no leaks, no wrong drops;
//! 4. control-socket security (mode, SO_PEERCRED) and malformed requests;
//! 5. verdict counters and drop events against an exact number of packets;
//! 6. audit mode;
//! 7. the Prometheus endpoint.
//!
//! Every agent gets a private control socket (`SG_SOCKET`), and every CLI call made
//! here names it, so nothing ever talks to the machine's `/run/sg/sg.sock`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sg_common::model::{Direction, Protocol};
use sg_daemon::compile::compile_instance;
use sg_daemon::desired::{DesiredState, plain_rules};
use sg_tests::daemon::{DAEMON_TIMEOUT, SgDaemon};
use sg_tests::*;

use sg_tests::EchoConn as Conn;

// ---------------------------------------------------------------------------------
// The daemon and its agent.

/// How a CLI command is run: forwarded to the agent on the private socket, or
/// executed in the CLI process itself (`SG_NO_AGENT=1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Via {
    Agent,
    Direct,
}

/// The fixture's private installation plus a private control socket: every command
/// run here has `SG_SOCKET` pointing at it, never at the default `/run/sg/sg.sock`.
struct Sg {
    daemon: SgDaemon,
    dir: PathBuf,
    socket: PathBuf,
}

impl Sg {
    fn new(topo: &Topology) -> Sg {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let daemon = SgDaemon::for_topology(topo).unwrap();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sg-tests-agent-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Traversable by everyone: the unprivileged-user checks must reach the socket.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Sg { daemon, socket: dir.join("sg.sock"), dir }
    }

    /// A command with the fixture's paths and the private socket.
    fn command(&self, via: Via, args: &[&str]) -> Command {
        let mut cmd = self.daemon.command(args);
        cmd.env("SG_SOCKET", &self.socket).env("NO_COLOR", "1").env_remove("RUST_LOG");
        match via {
            Via::Agent => cmd.env_remove("SG_NO_AGENT"),
            Via::Direct => cmd.env("SG_NO_AGENT", "1"),
        };
        cmd
    }

    #[track_caller]
    fn run(&self, via: Via, args: &[&str]) -> Output {
        let cmd = self.command(via, args);
        let desc = describe_command(&cmd);
        run_command(cmd, DAEMON_TIMEOUT).unwrap_or_else(|e| panic!("running `{desc}`: {e:#}"))
    }

    #[track_caller]
    fn ok(&self, via: Via, args: &[&str]) -> String {
        let out = self.run(via, args);
        assert!(
            out.status.success(),
            "`sg-daemon {}` ({via:?}) failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `yaml` to scratch file `name` and returns its path.
    fn file(&self, name: &str, yaml: &str) -> String {
        self.daemon.write_file(name, yaml).to_string_lossy().into_owned()
    }

    #[track_caller]
    fn apply(&self, via: Via, yaml: &str) -> String {
        let path = self.file("desired.yaml", yaml);
        self.ok(via, &["apply", "-f", &path])
    }

    /// `stats -s ID -o json`.
    #[track_caller]
    fn stats(&self, via: Via, id: &str) -> BTreeMap<String, u64> {
        let text = self.ok(via, &["stats", "-s", id, "-o", "json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`stats -s {id} -o json` ({e}): {text}"))
    }

    /// `ls -s ID -o json`, parsed.
    #[track_caller]
    fn rules(&self, via: Via, id: &str) -> Vec<serde_json::Value> {
        let text = self.ok(via, &["ls", "-s", id, "-o", "json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`ls -s {id} -o json` ({e}): {text}"))
    }

    /// The stored state, parsed as the daemon parses it; panics with the file's text
    /// when it does not parse.
    #[track_caller]
    fn stored(&self) -> DesiredState {
        let path = self.daemon.state_file();
        DesiredState::from_file(&path).unwrap_or_else(|e| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            panic!("stored state {} does not parse: {e}\n{text}", path.display())
        })
    }

    /// A command starting `sg-daemon run EXTRA...` on the private socket.
    fn agent_command(&self, extra: &[&str]) -> Command {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        let mut cmd = self.command(Via::Agent, &args);
        cmd.env("RUST_LOG", "info");
        cmd
    }

    /// Starts `sg-daemon run EXTRA...` on the private socket and waits until it serves.
    #[track_caller]
    fn start_agent(&self, extra: &[&str]) -> Agent {
        let mut agent = Agent { child: ChildGuard::spawn(self.agent_command(extra)).unwrap() };
        agent.wait_log("serving operator commands");
        agent
    }
}

impl Drop for Sg {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `sg-daemon run`; SIGKILLed on drop.
struct Agent {
    child: ChildGuard,
}

impl Agent {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// What the agent logged (RUST_LOG=info, stderr).
    fn log(&self) -> String {
        self.child.stderr()
    }

    /// Waits until the log contains `needle` (the agent must keep running).
    #[track_caller]
    fn wait_log(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(needle) {
            if let Err(e) = self.child.ensure_running() {
                panic!("agent died waiting for {needle:?}: {e:#}");
            }
            assert!(Instant::now() < deadline, "agent never logged {needle:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[track_caller]
    fn ensure_running(&mut self) {
        if let Err(e) = self.child.ensure_running() {
            panic!("the agent died: {e:#}");
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) of our own child, not reaped yet (its pid is still ours).
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the agent to exit; `None` if it is still running.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, and waits for it to be gone.
    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        assert!(self.wait_exit(Duration::from_secs(10)).is_some(), "SIGKILLed agent still running");
    }
}

// ---------------------------------------------------------------------------------
// Desired-state files.

const ID: &str = "vm1";
const SSH: &str = "{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 22, port_max: 22}";
const EGRESS_ANY: &str = "{direction: egress, ethertype: IPv4, protocol: any}";

fn tcp_in(port: u16) -> String {
    format!("{{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: {port}, port_max: {port}}}")
}

fn udp_in(port: u16) -> String {
    format!("{{direction: ingress, ethertype: IPv4, protocol: udp, port_min: {port}, port_max: {port}}}")
}

/// A desired state of one instance `ID` on `ep`'s tap with `rules` (YAML flow maps).
fn desired(ep: &Endpoint, audit: bool, rules: &[String]) -> String {
    let mut s = format!("instances:\n  - id: \"{ID}\"\n    interface: {}\n    os: linux\n", ep.tap());
    if audit {
        s.push_str("    audit: true\n");
    }
    s.push_str("    rules:\n");
    for r in rules {
        s.push_str(&format!("      - {r}\n"));
    }
    s
}

/// The ingress TCP ports the stored state opens for `ID` (single-port rules).
fn stored_tcp_ports(state: &DesiredState) -> BTreeSet<u16> {
    let inst = state.instances.iter().find(|i| i.id.as_str() == ID).expect("instance in the stored state");
    inst.effective_rules()
        .iter()
        .filter(|s| s.rule.direction == Direction::Ingress && s.rule.protocol == Protocol::Tcp)
        .filter_map(|s| s.rule.ports.map(|p| p.min))
        .collect()
}

// ---------------------------------------------------------------------------------
// Traffic.

/// Timeout of TCP probes expected to succeed.
const OPEN: Duration = Duration::from_secs(3);
/// Timeout of TCP probes expected to be dropped (a veth answers in well under 1 ms).
const DROPPED: Duration = Duration::from_millis(1000);

/// Whether a TCP echo `from` -> `dst:port` works (true) or is silently dropped
/// (false) within `timeout`; anything else (a reset, an ICMP error) fails the test.
#[track_caller]
fn tcp_open(from: &Endpoint, dst: IpAddr, port: u16, timeout: Duration) -> bool {
    match tcp_probe(from, None, SocketAddr::new(dst, port), timeout) {
        Ok(TcpOutcome::Echoed) => true,
        Ok(TcpOutcome::TimedOut) => false,
        Ok(other) => panic!("{} -> {dst}:{port}: unexpected {other:?}", from.name()),
        Err(e) => panic!("{} -> {dst}:{port}: harness failure: {e:#}", from.name()),
    }
}

/// Probes `ports` concurrently; true = open.
fn tcp_ports(from: &Endpoint, dst: IpAddr, ports: &[u16], timeout: Duration) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> =
            ports.iter().map(|&p| s.spawn(move || tcp_open(from, dst, p, timeout))).collect();
        handles.into_iter().map(|h| h.join().expect("probe thread panicked")).collect()
    })
}

#[track_caller]
fn expect_ports(what: &str, from: &Endpoint, dst: IpAddr, expect: &[(u16, bool)]) {
    let ports: Vec<u16> = expect.iter().map(|e| e.0).collect();
    let got = tcp_ports(from, dst, &ports, DROPPED);
    let want: Vec<bool> = expect.iter().map(|e| e.1).collect();
    assert_eq!(got, want, "{what}: are ports {ports:?} open?");
}

/// The agent tests' check: the established connection still echoes.
trait Check {
    fn check(&mut self, what: &str);
}

impl Check for Conn {
    #[track_caller]
    fn check(&mut self, what: &str) {
        if let Err(e) = self.exchange(OPEN) {
            panic!("{what}: established connection broken: {e}");
        }
    }
}

/// A TCP echo server for long-lived connections: unlike the harness's, it never
/// closes an idle connection (agents are stopped and waited for meanwhile).
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    #[track_caller]
    fn start(ep: &Endpoint, port: u16) -> EchoServer {
        let listener = ep
            .ns()
            .run(move || -> std::io::Result<std::net::TcpListener> {
                let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("echo server on port {port}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let stop3 = stop2.clone();
                        conns.push(std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                            let mut buf = [0u8; 4096];
                            while !stop3.load(Ordering::Relaxed) {
                                match s.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        }));
                    }
                    Err(_) => sleep_ms(10),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        EchoServer { stop, thread: Some(thread) }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `n` UDP datagrams from one fresh socket in `from` to `dst`; returns the
/// socket's source port.
#[track_caller]
fn send_udp(from: &Endpoint, dst: SocketAddr, n: usize) -> u16 {
    from.ns()
        .run(move || -> std::io::Result<u16> {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            for i in 0..n {
                sock.send_to(format!("sg agent datagram {i}").as_bytes(), dst)?;
            }
            Ok(sock.local_addr()?.port())
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("sending UDP to {dst}: {e}"))
}

/// A (numeric) field of `/proc/net/snmp`'s `Udp:` lines, in namespace `ns`.
fn udp_snmp(ns: &Netns, field: &'static str) -> u64 {
    ns.run(move || {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
        let names: Vec<&str> = lines[0].split_whitespace().collect();
        let values: Vec<&str> = lines[1].split_whitespace().collect();
        let at = names.iter().position(|n| *n == field).unwrap();
        values[at].parse::<u64>().unwrap()
    })
    .unwrap()
}

/// A free TCP port on 127.0.0.1 in namespace `ns`.
fn free_local_addr(ns: &Netns) -> SocketAddr {
    ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()).unwrap()
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

// ---------------------------------------------------------------------------------
// 1. Lifecycle.

/// `sg-daemon run` reconciles the stored state, serves the CLI (a forwarded command runs
/// with the agent's paths, not the caller's), refuses a second agent on its socket,
/// stops on SIGTERM with exit 0 removing its socket; enforcement — an established
/// connection included — goes on while it is down and across a restart.
///
/// SG BUG: on SIGTERM the agent logs "stopping", removes its socket and then never
/// exits: `agent::run` drops the tokio runtime, which waits forever for the
/// `spawn_blocking` event pump (`agent::event_pump` loops without end). For the same
/// reason a second agent started on a busy socket hangs after its (full) reconcile
/// instead of exiting with "another agent is listening". The test does all its other
/// checks first (SIGKILLing the hung agents) and fails at the end.
#[test]
fn lifecycle_reconcile_serve_sigterm_restart() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _ssh_srv = EchoServer::start(&vm, 22);
    let _srv: Vec<TcpServer> = [80, 8080].iter().map(|&p| tcp_server(&vm, p, false).unwrap()).collect();
    let sg = Sg::new(&topo);
    let v4 = vm.ip(false);
    expect_ports("nothing applied", &remote, v4, &[(22, true), (80, true), (8080, true)]);

    sg.apply(Via::Direct, &desired(&vm, false, &[SSH.into(), EGRESS_ANY.into()]));
    expect_ports("ssh only", &remote, v4, &[(22, true), (80, false), (8080, false)]);
    let mut ssh = Conn::open(&remote, SocketAddr::new(v4, 22));
    ssh.check("ssh only");

    // The stored state now differs from the kernel (restored from a backup, say): it
    // also opens 80. The agent's start-up must make the kernel match it.
    std::fs::write(sg.daemon.state_file(), desired(&vm, false, &[SSH.into(), tcp_in(80), EGRESS_ANY.into()]))
        .unwrap();
    let mut agent = sg.start_agent(&[]);
    assert!(agent.log().contains("reconciled 1 instances"), "agent log:\n{}", agent.log());
    let meta = std::fs::metadata(&sg.socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0), "control socket mode/owner");
    expect_ports("reconciled at start", &remote, v4, &[(22, true), (80, true), (8080, false)]);
    ssh.check("after the agent's start");

    // Served by the agent: a CLI whose own state directory is empty and whose own
    // bpffs does not exist lists the agent's instance (the agent's paths apply).
    let elsewhere = sg.dir.join("elsewhere");
    let mut cmd = sg.command(Via::Agent, &["ls", "-o", "json"]);
    cmd.env("SG_STATE_DIR", &elsewhere).env("SG_BPFFS", "/sys/fs/bpf/sgt-agent-no-such-dir");
    let out = run_command(cmd, DAEMON_TIMEOUT).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("\"{ID}\"")), "ls through the agent: {out:?}");
    assert!(!elsewhere.exists(), "the CLI ran `ls` itself instead of forwarding it");
    // The same with SG_NO_AGENT=1: executed locally, it sees the empty directory.
    let mut cmd = sg.command(Via::Direct, &["ls", "-o", "json"]);
    cmd.env("SG_STATE_DIR", &elsewhere);
    let out = run_command(cmd, DAEMON_TIMEOUT).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "SG_NO_AGENT=1 ls: {out:?}");

    // A second agent on the same socket is refused; the first one keeps serving.
    let mut stop_problems = Vec::new();
    let mut second = Agent { child: ChildGuard::spawn(sg.agent_command(&[])).unwrap() };
    match second.wait_exit(Duration::from_secs(15)) {
        Some(status) => {
            let err = second.log();
            assert!(
                !status.success() && err.contains("another agent is listening"),
                "second agent: {status}\n{err}"
            );
        }
        None => {
            stop_problems.push(format!(
                "a second agent on the same socket never exits (15 s) nor says why; its log:\n{}",
                second.log()
            ));
            second.kill();
        }
    }
    agent.ensure_running();
    sg.ok(Via::Agent, &["ls"]);

    let mut stop = |agent: &mut Agent, what: &str| {
        agent.signal(libc::SIGTERM);
        match agent.wait_exit(Duration::from_secs(10)) {
            Some(status) if status.code() == Some(0) => {}
            Some(status) => stop_problems.push(format!("{what}: SIGTERM: exit status {status}")),
            None => {
                stop_problems.push(format!(
                    "{what}: still running 10 s after SIGTERM (socket {}, log says stopping: {}); SIGKILLed",
                    if sg.socket.exists() { "still there" } else { "removed" },
                    agent.log().contains("stopping")
                ));
                agent.kill();
            }
        }
        assert!(agent.log().contains("stopping: enforcement stays"), "{what}: log:\n{}", agent.log());
        assert!(!sg.socket.exists(), "{what}: the socket {} is still there", sg.socket.display());
    };
    stop(&mut agent, "first agent");

    // No agent: enforcement and the established connection go on; the CLI (same
    // SG_SOCKET) runs commands itself.
    ssh.check("agent stopped");
    expect_ports("agent stopped", &remote, v4, &[(22, true), (80, true), (8080, false)]);
    let listed = sg.ok(Via::Agent, &["ls", "-o", "json"]);
    assert!(listed.contains(&format!("\"{ID}\"")), "{listed}");
    ssh.check("agent stopped, later");

    // Restart: the state is reconciled again, nothing changes for traffic.
    let mut agent = sg.start_agent(&[]);
    assert!(agent.log().contains("reconciled 1 instances"), "agent log:\n{}", agent.log());
    ssh.check("agent restarted");
    expect_ports("agent restarted", &remote, v4, &[(22, true), (80, true), (8080, false)]);
    sg.ok(Via::Agent, &["ls"]);
    stop(&mut agent, "restarted agent");
    ssh.check("restarted agent stopped");
    expect_ports("restarted agent stopped", &remote, v4, &[(22, true), (80, true), (8080, false)]);

    assert!(
        stop_problems.is_empty(),
        "SG BUG: the agent does not exit (tokio runtime waits for the endless event pump):\n{}",
        stop_problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// 2. SIGKILL in the middle of a change.

/// Which of tcp 80 and 8080 are open (22 always is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Set {
    p80: bool,
    p8080: bool,
}

/// Rule set A: tcp 80 open. B: tcp 80 closed, 8080 open. AB: both (between a `create`
/// and an `rm`, the only way the rule commands can go from A to B).
const A: Set = Set { p80: true, p8080: false };
const B: Set = Set { p80: false, p8080: true };
const AB: Set = Set { p80: true, p8080: true };

impl Set {
    fn name(self) -> &'static str {
        match (self.p80, self.p8080) {
            (true, false) => "A",
            (false, true) => "B",
            (true, true) => "AB",
            (false, false) => "none",
        }
    }

    fn rules(self) -> Vec<String> {
        let mut r = vec![SSH.to_string()];
        if self.p80 {
            r.push(tcp_in(80));
        }
        if self.p8080 {
            r.push(tcp_in(8080));
        }
        r.push(EGRESS_ANY.to_string());
        r
    }

    fn from_ports(ports: &BTreeSet<u16>) -> Set {
        assert!(ports.contains(&22), "the ssh rule is gone: {ports:?}");
        Set { p80: ports.contains(&80), p8080: ports.contains(&8080) }
    }
}

/// The enforced set, probed with short timeouts; when the answer is none of
/// `plausible`, probed again with long ones (a starved CPU may delay a handshake).
fn observe(remote: &Endpoint, dst: IpAddr, plausible: &[Set]) -> Set {
    let probe = |timeout| {
        let open = tcp_ports(remote, dst, &[80, 8080], timeout);
        Set { p80: open[0], p8080: open[1] }
    };
    let fast = probe(Duration::from_millis(250));
    if plausible.contains(&fast) { fast } else { probe(DROPPED) }
}

/// Background traffic while rule sets change: a second long-lived ssh connection
/// exchanging data and new ssh connections, all of which every set allows.
struct LiveTraffic {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    rounds: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveTraffic {
    fn start(remote: &Endpoint, dst: IpAddr) -> LiveTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let rounds = Arc::new(AtomicU32::new(0));
        let mut conn = Conn::open(remote, SocketAddr::new(dst, 22));
        let (remote, stop2, failures2, rounds2) =
            (remote.clone(), stop.clone(), failures.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Err(e) = conn.exchange(OPEN) {
                    failures2.lock().unwrap().push(format!("live connection: {e}"));
                    return;
                }
                match tcp_probe(&remote, None, SocketAddr::new(dst, 22), OPEN) {
                    Ok(TcpOutcome::Echoed) => {}
                    other => failures2.lock().unwrap().push(format!("new ssh connection: {other:?}")),
                }
                rounds2.fetch_add(1, Ordering::Relaxed);
                sleep_ms(10);
            }
        });
        LiveTraffic { stop, failures, rounds, thread: Some(thread) }
    }

    #[track_caller]
    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "live traffic broke:\n{}", failures.join("\n"));
        self.rounds.load(Ordering::Relaxed)
    }
}

impl Drop for LiveTraffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When a command under test is SIGKILLed.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// A random delay after the start (0-30 ms).
    Early,
    /// A random delay within the command's usual duration.
    Anytime,
    /// As soon as its log says the new rules are bound ("rules in force"), or that
    /// the apply completed ("apply complete"): between the bind, the collection of
    /// the old entries and the saving of the state file.
    Log(&'static str),
}

/// `create`, `rm` and `apply -f` are SIGKILLed at random moments, in both variants:
/// the agent executing a forwarded command is killed (and restarted), or the CLI
/// executing it itself (`SG_NO_AGENT=1`, the agent running meanwhile) is. Each
/// command changes the rule set from `old` to `new` (apply: A <-> B; create/rm: A or
/// B -> AB -> A or B, one rule at a time). After every kill:
/// - the enforced set (tcp 80 and 8080 probed) is exactly `old` or exactly `new`,
///   never a mix (for `apply -f`: 80 and 8080 are never both open nor both closed);
/// - the stored state parses and is `old` or `new`, and never `new` while the kernel
///   still enforces `old` (the kernel is changed first, the file after);
/// - a restarted agent makes the kernel match the stored state;
/// - `apply -f new` succeeds and converges (probed, and in the stored state);
/// - the maps hold exactly the entries the new set compiles to (`sg_map_entries` of
///   the agent's metrics): whatever the kill left behind was collected;
/// - an ssh connection opened at the start still exchanges data; live traffic (a
///   second ssh connection exchanging data, new ssh connections) never fails.
///
/// A command takes from ~20 ms (idle machine) to seconds (loaded: each one loads the
/// eBPF programs through the verifier before it touches a map), so kill moments are a
/// mix: 0-30 ms after the start, random within the command's measured duration, and
/// right after its log reports the bind ("rules in force") or the end of the apply
/// ("apply complete") — the narrow windows where a kill leaves the kernel new and the
/// stored state old (the agent and the CLI run with RUST_LOG=info). The outcomes are
/// printed. `SG_KILL_ITERATIONS` (default 24) and `SG_KILL_SEED` replay a run.
#[test]
fn sigkill_mid_change_leaves_old_or_new() {
    require_root!();
    let iterations: usize =
        std::env::var("SG_KILL_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let seed: u64 =
        std::env::var("SG_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("sigkill test: {iterations} iterations, SG_KILL_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _ssh_srv = EchoServer::start(&vm, 22);
    let _srv: Vec<TcpServer> = [80, 8080].iter().map(|&p| tcp_server(&vm, p, false).unwrap()).collect();
    let sg = Sg::new(&topo);
    let v4 = vm.ip(false);
    assert_eq!(observe(&remote, v4, &[AB]), AB, "nothing applied: 80 and 8080 open");
    let files: BTreeMap<Set, String> = [A, B, AB]
        .iter()
        .map(|&s| (s, sg.file(&format!("set-{}.yaml", s.name()), &desired(&vm, false, &s.rules()))))
        .collect();

    // Durations of a whole command, per path, to aim the kills.
    let mut duration: BTreeMap<Via, Duration> = BTreeMap::new();
    let timed_apply = |via: Via, set: Set| {
        let t = Instant::now();
        sg.ok(via, &["apply", "-f", &files[&set]]);
        t.elapsed()
    };
    duration.insert(Via::Direct, timed_apply(Via::Direct, B));
    // The agents serve metrics: the map entries show what an apply left behind.
    let maddr = free_local_addr(topo.host());
    let agent_args = ["--metrics".to_string(), maddr.to_string()];
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let start_agent = || {
        let mut agent = sg.start_agent(&agent_args);
        agent.wait_log("metrics on /metrics");
        agent
    };
    // Entries (PORT_CLASS + PORT_CLASS_EXACT, CIDR_ALLOW + CIDR_ALLOW_EXACT) of each
    // set, compiled as the daemon does.
    let compiled: BTreeMap<Set, (u64, u64)> = [A, B, AB]
        .iter()
        .map(|&s| {
            let state = DesiredState::from_yaml(&desired(&vm, false, &s.rules()), "set").unwrap();
            let rules = plain_rules(&state.instances[0].effective_rules());
            let c = compile_instance(0, &rules, &[]);
            (s, (c.port_entries() as u64, c.cidr_entries() as u64))
        })
        .collect();
    let mut agent = start_agent();
    duration.insert(Via::Agent, timed_apply(Via::Agent, A));
    let mut cur = A;
    assert_eq!(observe(&remote, v4, &[A]), A);
    let mut ssh = Conn::open(&remote, SocketAddr::new(v4, 22));
    ssh.check("start");
    let live = LiveTraffic::start(&remote, v4);

    // Each block: both variants of each command, keeping the create -> rm chain.
    const SCHEDULE: [(Via, &str); 6] = [
        (Via::Agent, "apply"),
        (Via::Direct, "apply"),
        (Via::Agent, "create"),
        (Via::Agent, "rm"),
        (Via::Direct, "create"),
        (Via::Direct, "rm"),
    ];
    // (via, command, kill moment, kernel after the kill, stored after the kill) -> count
    let mut outcomes: BTreeMap<(Via, &str, &str, &str, &str), usize> = BTreeMap::new();
    let mut reverted_by_restart = 0;
    for i in 0..iterations {
        let (via, label) = SCHEDULE[i % SCHEDULE.len()];
        let old = cur;
        let (args, new): (Vec<String>, Set) = match label {
            "apply" => {
                let new = if old == A { B } else { A };
                (vec!["apply".into(), "-f".into(), files[&new].clone()], new)
            }
            "create" => {
                let port = if old == A { "8080" } else { "80" };
                let args = ["create", "-s", ID, "--in", "--proto", "tcp", "-p", port];
                (args.iter().map(|s| s.to_string()).collect(), AB)
            }
            _ => {
                assert_eq!(old, AB);
                let drop80 = rng.random_bool(0.5);
                let port = if drop80 { 80 } else { 8080 };
                let rules = sg.rules(via, ID);
                let rule = rules
                    .iter()
                    .find(|r| r["protocol"] == "tcp" && r["port_min"] == port)
                    .unwrap_or_else(|| panic!("no tcp {port} rule: {rules:?}"));
                let uuid = rule["id"].as_str().unwrap().to_string();
                (vec!["rm".into(), uuid[..8].to_string()], if drop80 { B } else { A })
            }
        };
        let at = match rng.random_range(0..4) {
            0 => KillAt::Early,
            1 => KillAt::Anytime,
            2 => KillAt::Log("rules in force"),
            _ => KillAt::Log("apply complete"),
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut what =
            format!("iteration {i}: {via:?} `{}` {} -> {}", argv.join(" "), old.name(), new.name());

        let mut cmd = sg.command(via, &argv);
        cmd.env("RUST_LOG", "info");
        let count = |text: &str, needle: &str| text.matches(needle).count();
        let agent_before: BTreeMap<&str, usize> =
            ["rules in force", "apply complete"].iter().map(|&n| (n, count(&agent.log(), n))).collect();
        let t0 = Instant::now();
        let mut cli = ChildGuard::spawn(cmd).unwrap();
        match at {
            KillAt::Early => std::thread::sleep(Duration::from_millis(rng.random_range(0..=30))),
            KillAt::Anytime => {
                let ms = u64::try_from(duration[&via].as_millis()).unwrap_or(1000).max(1);
                std::thread::sleep(Duration::from_millis(rng.random_range(0..=ms)));
            }
            KillAt::Log(needle) => {
                // The log of whoever executes the command: the agent, or the CLI.
                let deadline = Instant::now() + DAEMON_TIMEOUT;
                loop {
                    let seen = match via {
                        Via::Agent => count(&agent.log(), needle) > agent_before[needle],
                        Via::Direct => cli.stderr().contains(needle),
                    };
                    if seen || cli.try_wait().unwrap().is_some() || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        what.push_str(&format!(", killed {:?} after the start ({at:?})", t0.elapsed()));
        let finished_first = cli.try_wait().unwrap().is_some();
        match via {
            Via::Agent => {
                agent.kill();
                // The CLI gets no reply (or, not connected yet, runs the command itself).
                let deadline = Instant::now() + DAEMON_TIMEOUT;
                while cli.try_wait().unwrap().is_none() {
                    assert!(Instant::now() < deadline, "{what}: the CLI hangs after the agent died");
                    sleep_ms(2);
                }
            }
            Via::Direct => drop(cli), // SIGKILL (unless it finished already)
        }

        let kernel = observe(&remote, v4, &[old, new]);
        assert!(kernel == old || kernel == new, "{what}: enforcement is {} = {kernel:?}", kernel.name());
        let stored = Set::from_ports(&stored_tcp_ports(&sg.stored()));
        assert!(stored == old || stored == new, "{what}: the stored state is {} = {stored:?}", stored.name());
        assert!(
            !(stored == new && kernel == old),
            "{what}: the stored state says {} but the kernel still enforces {}",
            new.name(),
            old.name()
        );
        let tag = |s: Set| if s == old { "old" } else { "new" };
        let moment = match (finished_first, at) {
            (true, _) => "after it finished",
            (false, KillAt::Early) => "0-30 ms",
            (false, KillAt::Anytime) => "random",
            (false, KillAt::Log(n)) => n,
        };
        *outcomes.entry((via, label, moment, tag(kernel), tag(stored))).or_default() += 1;
        ssh.check(&what);

        match via {
            Via::Agent => {
                agent = start_agent();
                assert!(
                    agent.log().contains("reconciled 1 instances"),
                    "{what}: restarted agent:\n{}",
                    agent.log()
                );
                if kernel != stored {
                    let now = observe(&remote, v4, &[stored]);
                    assert_eq!(now, stored, "{what}: the restarted agent did not restore the stored state");
                    reverted_by_restart += 1;
                }
            }
            Via::Direct => agent.ensure_running(),
        }

        // Converge.
        let t = Instant::now();
        sg.ok(via, &["apply", "-f", &files[&new]]);
        let took = t.elapsed();
        duration.insert(via, (duration[&via] * 3 + took) / 4);
        let now = observe(&remote, v4, &[new]);
        assert_eq!(now, new, "{what}: `apply -f` of {} did not converge", new.name());
        assert_eq!(Set::from_ports(&stored_tcp_ports(&sg.stored())), new, "{what}: stored state after apply");
        // Whatever the kill left in the maps, the apply collected it.
        let (_, body) = http_get(topo.host(), maddr, "/metrics");
        let sum = |a: &str, b: &str| Some(sample(&body, a)? + sample(&body, b)?);
        let entries = (
            sum("sg_map_entries{map=\"PORT_CLASS\"}", "sg_map_entries{map=\"PORT_CLASS_EXACT\"}"),
            sum("sg_map_entries{map=\"CIDR_ALLOW\"}", "sg_map_entries{map=\"CIDR_ALLOW_EXACT\"}"),
        );
        let want = compiled[&new];
        assert_eq!(entries, (Some(want.0), Some(want.1)), "{what}: map entries after the apply:\n{body}");
        ssh.check(&format!("{what}, converged"));
        cur = new;
    }
    let live_rounds = live.finish();
    ssh.check("end");

    eprintln!(
        "sigkill test: {iterations} kills in {:?}; live traffic rounds: {live_rounds}; kernel reverted \
         by an agent restart: {reverted_by_restart}; outcomes (via, command, kill moment, kernel, stored):",
        started.elapsed()
    );
    for (k, n) in &outcomes {
        eprintln!("  {k:?}: {n}");
    }
    drop(agent);
}

// ---------------------------------------------------------------------------------
// 3. Atomic flips under traffic.

/// One datagram sent by the flip test's sender.
struct Sent {
    seq: u32,
    /// Index into the flip test's ports.
    port: usize,
    /// Nanoseconds since the test's epoch just before and just after `send`.
    before: u64,
    after: u64,
}

/// One rule-set switch: `apply -f` started and returned (ns since the epoch).
struct Flip {
    start: u64,
    done: u64,
    /// Index of the set now in force (0 = X, 1 = Y).
    set: usize,
}

/// Ports of the flip test: X opens [0] and [2], Y opens [1] and [2].
const FLIP_PORTS: [u16; 3] = [5001, 5002, 5003];
/// Packets sent this long before the next switch started count as sent under the
/// previous one (in-flight margin: a datagram crosses the veths within the `send`
/// call, or microseconds after it).
const FLIP_MARGIN_NS: u64 = 3_000_000;

fn ns_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Rule sets X (udp 5001 + 5003) and Y (udp 5002 + 5003) are flipped with `apply -f`
/// (direct path) while the remote streams numbered datagrams to all three ports and
/// the instance records what arrives. With the time each switch started and
/// returned, and each datagram's send time:
/// - leaks: datagrams to the port only the previous set opened, sent after the
///   switch returned (and before the next one started, minus an in-flight margin),
///   that arrived — must be 0;
/// - wrong drops: any missing datagram to 5003 (open in both sets), and any missing
///   datagram to 5001/5002 sent while its set was firmly in force — must be 0.
///
/// 1000 flips (`SG_FLIPS`); on a machine so loaded that they take over 60 s, it stops
/// at 60 s once 300 are done (and says so).
#[test]
fn atomic_flips_under_udp_traffic() {
    require_root!();
    let target: usize = std::env::var("SG_FLIPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let sg = Sg::new(&topo);
    let v4 = vm.ip(false);
    let sets = [
        vec![SSH.to_string(), udp_in(FLIP_PORTS[0]), udp_in(FLIP_PORTS[2]), EGRESS_ANY.to_string()],
        vec![SSH.to_string(), udp_in(FLIP_PORTS[1]), udp_in(FLIP_PORTS[2]), EGRESS_ANY.to_string()],
    ];
    let files = [
        sg.file("x.yaml", &desired(&vm, false, &sets[0])),
        sg.file("y.yaml", &desired(&vm, false, &sets[1])),
    ];

    // Receivers in the instance: (seq) per port.
    let stop_rx = Arc::new(AtomicBool::new(false));
    let received: Arc<Vec<Mutex<Vec<u32>>>> =
        Arc::new(FLIP_PORTS.iter().map(|_| Mutex::new(Vec::new())).collect());
    let mut rx_threads = Vec::new();
    for (i, &port) in FLIP_PORTS.iter().enumerate() {
        let sock = vm
            .ns()
            .run(move || -> std::io::Result<UdpSocket> {
                let s = UdpSocket::bind(("0.0.0.0", port))?;
                let size: libc::c_int = 16 << 20;
                // SAFETY: setsockopt with an int option of the right size.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&raw const size).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            })
            .unwrap()
            .unwrap();
        let (stop, received) = (stop_rx.clone(), received.clone());
        rx_threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf)
                    && n == 8
                    && buf[4..8] == *b"sgfl"
                {
                    received[i].lock().unwrap().push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                }
            }
        }));
    }
    let rcvbuf_errors = udp_snmp(vm.ns(), "RcvbufErrors");

    // Sender in the remote: one socket per port (so each port is one tracked flow).
    let epoch = Instant::now();
    let stop_tx = Arc::new(AtomicBool::new(false));
    let socks: Vec<UdpSocket> = FLIP_PORTS
        .iter()
        .map(|&port| {
            remote
                .ns()
                .run(move || -> std::io::Result<UdpSocket> {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    s.connect(SocketAddr::new(v4, port))?;
                    Ok(s)
                })
                .unwrap()
                .unwrap()
        })
        .collect();
    // Nothing applied: every port receives (so a drop below is the data plane's).
    for (i, s) in socks.iter().enumerate() {
        s.send(&[0xff, 0xff, 0xff, 0xff, b's', b'g', b'f', b'l']).unwrap();
        let deadline = Instant::now() + OPEN;
        while !received[i].lock().unwrap().contains(&u32::MAX) {
            assert!(Instant::now() < deadline, "nothing applied: udp {} does not arrive", FLIP_PORTS[i]);
            sleep_ms(5);
        }
    }
    sg.ok(Via::Direct, &["apply", "-f", &files[0]]);
    let mut flips = vec![Flip { start: 0, done: ns_since(epoch), set: 0 }];
    let sender = {
        let stop = stop_tx.clone();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let mut payload = [0u8; 8];
                payload[..4].copy_from_slice(&seq.to_be_bytes());
                payload[4..].copy_from_slice(b"sgfl");
                for (port, s) in socks.iter().enumerate() {
                    let before = ns_since(epoch);
                    // A refused send (an ICMP error queued) is just a lost datagram.
                    let _ = s.send(&payload);
                    log.push(Sent { seq, port, before, after: ns_since(epoch) });
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            log
        })
    };

    sleep_ms(100);
    let started = Instant::now();
    let mut stopped_early = false;
    for k in 1..=target {
        let set = k % 2;
        let start = ns_since(epoch);
        sg.ok(Via::Direct, &["apply", "-f", &files[set]]);
        flips.push(Flip { start, done: ns_since(epoch), set });
        // A stable window after each switch.
        sleep_ms(8);
        if k >= 300 && k < target && started.elapsed() > Duration::from_secs(60) {
            stopped_early = true;
            break;
        }
    }
    let flip_time = started.elapsed();
    sleep_ms(50);
    stop_tx.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    sleep_ms(300);
    stop_rx.store(true, Ordering::Relaxed);
    for t in rx_threads {
        t.join().unwrap();
    }
    let rcvbuf_errors = udp_snmp(vm.ns(), "RcvbufErrors") - rcvbuf_errors;

    let got: Vec<BTreeSet<u32>> =
        received.iter().map(|r| r.lock().unwrap().iter().copied().collect()).collect();
    let (mut leaks, mut wrong_drops, mut checked_blocked, mut checked_allowed, mut common) =
        (Vec::new(), Vec::new(), 0usize, 0usize, 0usize);
    for s in &sent {
        let arrived = got[s.port].contains(&s.seq);
        if s.port == 2 {
            common += 1;
            if !arrived {
                wrong_drops.push(format!("udp {} seq {} (open in both sets)", FLIP_PORTS[2], s.seq));
            }
            continue;
        }
        // The switch in force when it was sent, if firmly so.
        let k = flips.partition_point(|f| f.done <= s.before);
        if k == 0 {
            continue;
        }
        if flips.get(k).is_some_and(|next| s.after + FLIP_MARGIN_NS > next.start) {
            continue;
        }
        let allowed = flips[k - 1].set == s.port;
        if allowed {
            checked_allowed += 1;
            if !arrived {
                wrong_drops.push(format!("udp {} seq {} (open, flip {})", FLIP_PORTS[s.port], s.seq, k - 1));
            }
        } else {
            checked_blocked += 1;
            if arrived {
                leaks.push(format!(
                    "udp {} seq {} sent {:.3} ms after flip {} returned",
                    FLIP_PORTS[s.port],
                    s.seq,
                    (s.before - flips[k - 1].done) as f64 / 1e6,
                    k - 1
                ));
            }
        }
    }
    let flipped = flips.len() - 1;
    eprintln!(
        "atomic flips: {flipped} flips in {flip_time:?}{}; {} datagrams sent; checked: {checked_blocked} that \
         must be dropped, {checked_allowed} that must arrive (5001/5002 in stable windows), {common} to 5003; \
         leaks: {}, wrong drops: {}, receiver buffer overflows: {rcvbuf_errors}",
        if stopped_early { " (stopped early: over 60 s)" } else { "" },
        sent.len(),
        leaks.len(),
        wrong_drops.len()
    );
    assert_eq!(rcvbuf_errors, 0, "the receivers overflowed: missing datagrams would prove nothing");
    assert!(checked_blocked > 1000 && checked_allowed > 1000, "too few datagrams in stable windows");
    assert!(
        leaks.is_empty(),
        "{} leaked datagrams, first ones:\n{}",
        leaks.len(),
        leaks[..leaks.len().min(20)].join("\n")
    );
    assert!(
        wrong_drops.is_empty(),
        "{} wrongly dropped datagrams, first ones:\n{}",
        wrong_drops.len(),
        wrong_drops[..wrong_drops.len().min(20)].join("\n")
    );
}

// ---------------------------------------------------------------------------------
// 4. Control socket security and malformed requests.

/// Runs the CLI as uid/gid 65534 (nobody) with `setpriv`, with the fixture's
/// environment (private socket included).
fn as_nobody(sg: &Sg, args: &[&str]) -> Output {
    let inner = sg.command(Via::Agent, args);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(sg.daemon.binary()).args(args);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    run_command(cmd, DAEMON_TIMEOUT).unwrap()
}

/// Sends raw bytes on the control socket (then shuts down writing) and returns the
/// reply line parsed as JSON, or `None` when the agent closed without one.
fn raw_request(socket: &Path, bytes: Vec<u8>) -> Option<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    // The agent may stop reading (and close) before a big request is written.
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    // Read up to the end of the first line: the agent may close with our request
    // unread, which resets the connection after its reply.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.contains(&b'\n') {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert!(reply.is_empty(), "read error {e} after a partial reply {reply:?}");
                break;
            }
        }
    }
    w.join().unwrap();
    let text = String::from_utf8(reply).expect("reply is UTF-8");
    let line = text.lines().next()?;
    Some(serde_json::from_str(line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text}")))
}

/// The socket is 0600 root; an unprivileged user is refused by the file mode (exit
/// 1, clear message) and, with the mode opened to 0666, by the agent itself after
/// SO_PEERCRED (exit 13, the uid named); a configured group is let in. Malformed
/// requests get an error reply (or a clean close) and the agent keeps serving.
///
/// SG BUG: the SO_PEERCRED refusal is answered without reading the request and the
/// connection closed; a CLI that writes its request after that gets EPIPE and exits 1
/// with "talking to the agent ...: Broken pipe" (6 of 15 attempts here) instead of
/// exit 13 and the agent's message. Nothing is executed either way (checked). The
/// test does its other checks first and fails at the end.
#[test]
fn control_socket_security_and_malformed_requests() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let sg = Sg::new(&topo);
    sg.apply(Via::Direct, &desired(&vm, false, &[SSH.into(), EGRESS_ANY.into()]));
    let mut agent = sg.start_agent(&[]);
    let meta = std::fs::metadata(&sg.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "socket mode");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "socket owner");
    let before = sg.ok(Via::Agent, &["ls", "-o", "json"]);

    // Unprivileged: the file mode refuses the connection.
    let out = as_nobody(&sg, &["ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "nobody, socket 0600: {err}");
    assert!(
        err.contains("permission denied") && err.contains(&sg.socket.display().to_string()),
        "nobody, socket 0600: {err}"
    );
    assert!(out.stdout.is_empty(), "nobody got output: {:?}", String::from_utf8_lossy(&out.stdout));

    // World-writable socket: the agent itself refuses the peer by its credentials,
    // which the CLI reports with exit code 13 and the agent's message.
    std::fs::set_permissions(&sg.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let attempts: [&[&str]; 3] = [&["ls"], &["apply", "-f", "/nonexistent.yaml"], &["uninstall"]];
    for args in attempts.iter().cycle().take(15) {
        let out = as_nobody(&sg, args);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_ne!(out.status.code(), Some(0), "nobody `{}` was served: {err}", args.join(" "));
        assert!(out.stdout.is_empty(), "nobody got output: {:?}", String::from_utf8_lossy(&out.stdout));
        let outcome = if out.status.code() == Some(13)
            && err.contains("permission denied")
            && err.contains("uid 65534")
        {
            "exit 13, uid 65534 named".to_string()
        } else {
            format!("{}: {err}", out.status)
        };
        *refusals.entry(outcome).or_default() += 1;
    }
    let mut bugs = Vec::new();
    if refusals.len() != 1 || !refusals.contains_key("exit 13, uid 65534 named") {
        // SG BUG: the agent writes its refusal and closes without reading the request;
        // a CLI still writing it gets EPIPE and reports "Broken pipe" (exit 1), never
        // showing the agent's message (agent::handle, agent::forward).
        bugs.push(format!("nobody on a 0666 socket, 15 attempts, outcomes: {refusals:#?}"));
    }
    assert!(agent.log().contains("serving operator commands"));
    agent.ensure_running();
    assert_eq!(sg.ok(Via::Agent, &["ls", "-o", "json"]), before, "the refused commands changed something");
    assert!(sg.daemon.bpffs().exists(), "`uninstall` from nobody went through");

    // Malformed requests.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage bytes", b"\x00\xff\xfe garbage \x01\x02\n".to_vec(), "bad request"),
        ("invalid JSON", b"{\"argv\": [\"ls\"\n".to_vec(), "bad request"),
        ("JSON without argv", b"{\"cwd\": \"/\"}\n".to_vec(), "bad request"),
        ("argv not strings", b"{\"argv\": [1, 2]}\n".to_vec(), "bad request"),
        ("100 KB line", [vec![b'a'; 100 * 1024], b"\n".to_vec()].concat(), "larger than"),
        (
            "100 KB of JSON",
            format!("{{\"argv\": [\"ls\", \"{}\"]}}\n", "x".repeat(100 * 1024)).into_bytes(),
            "larger than",
        ),
        ("unknown command", b"{\"argv\": [\"frobnicate\", \"--now\"]}\n".to_vec(), "frobnicate"),
        ("empty argv", b"{\"argv\": []}\n".to_vec(), ""),
        ("run", b"{\"argv\": [\"run\"]}\n".to_vec(), "cannot be sent to a running agent"),
        ("no newline", b"{\"argv\": [\"ls\"]}".to_vec(), ""),
    ];
    for (what, bytes, expect) in cases {
        match raw_request(&sg.socket, bytes) {
            None => {}
            Some(reply) => {
                let code =
                    reply["code"].as_i64().unwrap_or_else(|| panic!("{what}: reply without code: {reply}"));
                let stderr = reply["stderr"].as_str().unwrap_or_default();
                if what == "no newline" {
                    // A complete JSON request at EOF: executed like any other.
                    assert_eq!(code, 0, "{what}: {reply}");
                    continue;
                }
                assert_ne!(code, 0, "{what}: accepted: {reply}");
                assert!(stderr.contains(expect), "{what}: expected {expect:?} in {reply}");
            }
        }
        agent.ensure_running();
    }
    // A connection closed at once, and one that says nothing and stays open: neither
    // keeps the agent from serving others.
    drop(UnixStream::connect(&sg.socket).unwrap());
    let silent = UnixStream::connect(&sg.socket).unwrap();
    let t = Instant::now();
    assert_eq!(sg.ok(Via::Agent, &["ls", "-o", "json"]), before);
    assert!(t.elapsed() < Duration::from_secs(5), "`ls` waited {:?} behind a silent connection", t.elapsed());
    drop(silent);
    agent.ensure_running();
    assert_eq!(sg.ok(Via::Agent, &["ls", "-o", "json"]), before, "after the malformed requests");

    // A group allowed on the socket (--socket-gid): mode 0660, that group's users in.
    agent.kill();
    let mut agent = sg.start_agent(&["--socket-gid", "65534"]);
    let meta = std::fs::metadata(&sg.socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o660, 0, 65534), "socket with --socket-gid");
    let out = as_nobody(&sg, &["ls", "-o", "json"]);
    assert!(out.status.success(), "nobody in the socket group: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), before);
    agent.ensure_running();
    assert!(
        bugs.is_empty(),
        "SG BUG: the SO_PEERCRED refusal does not reach the CLI reliably:\n{}",
        bugs.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// 5. Counters and drop events.

/// Rules without noise: nothing but the probes below can hit `no-rule` (IPv6
/// neighbour traffic is let in by rule or as infrastructure).
fn quiet_rules() -> Vec<String> {
    vec![
        SSH.to_string(),
        "{direction: ingress, ethertype: IPv6, protocol: icmpv6}".to_string(),
        EGRESS_ANY.to_string(),
        "{direction: egress, ethertype: IPv6, protocol: any}".to_string(),
    ]
}

/// `events -s ID -o json` (through the agent), parsed.
fn events_of(sg: &Sg) -> Vec<serde_json::Value> {
    sg.ok(Via::Agent, &["events", "-s", ID, "-o", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}")))
        .collect()
}

/// N = 20 UDP datagrams to a port no rule opens: `no-rule` grows by exactly N, `events`
/// lists N drops with the 5-tuple and reason, and `events -f` streams new ones.
#[test]
fn counters_and_events_match_the_traffic() {
    require_root!();
    const N: usize = 20;
    const PORT: u16 = 7777;
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let sg = Sg::new(&topo);
    let (v4, r4) = (vm.ip(false), remote.ip(false));
    let dst = SocketAddr::new(v4, PORT);
    let listener = vm
        .ns()
        .run(move || {
            let s = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            s
        })
        .unwrap();
    let arrivals = |l: &UdpSocket| {
        let mut n = 0;
        let mut buf = [0u8; 128];
        while l.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    };
    // Nothing applied: they arrive.
    send_udp(&remote, dst, 3);
    assert_eq!(arrivals(&listener), 3, "nothing applied: datagrams to {dst}");

    sg.apply(Via::Direct, &desired(&vm, false, &quiet_rules()));
    let mut agent = sg.start_agent(&[]);
    let before = sg.stats(Via::Agent, ID);
    let sport = send_udp(&remote, dst, N);
    sleep_ms(300);
    assert_eq!(arrivals(&listener), 0, "blocked datagrams reached the instance");
    let after = sg.stats(Via::Agent, ID);
    let grew = |r: &str| after.get(r).copied().unwrap_or(0) - before.get(r).copied().unwrap_or(0);
    assert_eq!(grew("no-rule"), N as u64, "no-rule counter\nbefore {before:?}\nafter {after:?}");
    for reason in after.keys().filter(|r| *r != "no-rule" && *r != "allow-infra" && *r != "allow-rule") {
        assert_eq!(grew(reason), 0, "{reason} grew\nbefore {before:?}\nafter {after:?}");
    }

    // The events, through the agent (the ring's reader).
    let ours = |evs: &[serde_json::Value], sport: u16| -> Vec<serde_json::Value> {
        evs.iter().filter(|e| e["src_port"] == sport).cloned().collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut evs = ours(&events_of(&sg), sport);
    while evs.len() < N && Instant::now() < deadline {
        sleep_ms(100);
        evs = ours(&events_of(&sg), sport);
    }
    sleep_ms(300);
    let all = events_of(&sg);
    evs = ours(&all, sport);
    assert_eq!(evs.len(), N, "events of our datagrams (all events: {all:?})");
    for e in &evs {
        let want = serde_json::json!({
            "instance": ID, "direction": "ingress", "reason": "no-rule", "protocol": 17,
            "src": r4.to_string(), "dst": v4.to_string(), "src_port": sport, "dst_port": PORT,
        });
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&e[k], v, "event field {k}: {e}");
        }
    }
    let table = sg.ok(Via::Agent, &["events", "-s", ID]);
    let row = format!("{r4}:{sport} -> {v4}:{PORT}");
    assert_eq!(table.lines().filter(|l| l.contains(&row) && l.contains("no-rule")).count(), N, "{table}");
    assert!(
        events_of_other(&sg).iter().all(|e| e["src_port"] != sport),
        "another instance's filter shows ours"
    );

    // `events -f` streams new ones as they happen.
    let mut cmd = sg.command(Via::Agent, &["events", "-f", "-s", ID, "-o", "json"]);
    cmd.env_remove("SG_NO_AGENT");
    let follower = ChildGuard::spawn(cmd).unwrap();
    let lines_with = |port: u16| {
        follower
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["src_port"] == port)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines_with(sport) < N {
        assert!(Instant::now() < deadline, "`events -f` backlog: {}", follower.stdout());
        sleep_ms(50);
    }
    const M: usize = 7;
    let t = Instant::now();
    let sport2 = send_udp(&remote, dst, M);
    while lines_with(sport2) < M {
        assert!(t.elapsed() < Duration::from_secs(5), "`events -f` did not stream:\n{}", follower.stdout());
        sleep_ms(20);
    }
    let streamed_after = t.elapsed();
    sleep_ms(300);
    assert_eq!(lines_with(sport2), M, "`events -f` streamed duplicates:\n{}", follower.stdout());
    drop(follower);
    agent.ensure_running();
    sg.ok(Via::Agent, &["ls"]);
    let after2 = sg.stats(Via::Agent, ID);
    assert_eq!(
        after2["no-rule"] - after["no-rule"],
        M as u64,
        "no-rule after {M} more\nbefore {after:?}\nafter {after2:?}"
    );
    eprintln!("events -f showed {M} new drops within {streamed_after:?}");
}

/// `events -s other -o json` (an instance that does not exist): nothing of ours.
fn events_of_other(sg: &Sg) -> Vec<serde_json::Value> {
    sg.ok(Via::Agent, &["events", "-s", "other", "-o", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------
// 6. Audit mode.

/// `audit: true` counts but never drops: tcp 80 (no rule) connects and is counted as
/// `no-rule`; switching audit off blocks new connections and the one audit let in.
#[test]
fn audit_mode_counts_but_does_not_drop() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _srv: Vec<TcpServer> = [22, 80].iter().map(|&p| tcp_server(&vm, p, false).unwrap()).collect();
    let sg = Sg::new(&topo);
    let v4 = vm.ip(false);
    let rules = quiet_rules();
    sg.apply(Via::Direct, &desired(&vm, false, &rules));
    expect_ports("enforcing", &remote, v4, &[(22, true), (80, false)]);
    let _agent = sg.start_agent(&[]);

    sg.apply(Via::Agent, &desired(&vm, true, &rules));
    let before = sg.stats(Via::Agent, ID);
    expect_ports("audit", &remote, v4, &[(22, true), (80, true)]);
    let mut conn = Conn::open(&remote, SocketAddr::new(v4, 80));
    conn.check("audit");
    let after = sg.stats(Via::Agent, ID);
    let grew = |r: &str| after[r] - before[r];
    // SYN, ACK, data and its ACKs of two connections: all judged no-rule, all passed.
    assert!(grew("no-rule") >= 6, "no-rule in audit mode\nbefore {before:?}\nafter {after:?}");
    let evs = events_of(&sg);
    assert!(
        evs.iter().any(|e| e["dst_port"] == 80 && e["reason"] == "no-rule"),
        "audit mode reports what it would drop: {evs:?}"
    );

    sg.apply(Via::Agent, &desired(&vm, false, &rules));
    expect_ports("audit off", &remote, v4, &[(22, true), (80, false)]);
    assert!(conn.exchange(Duration::from_millis(1500)).is_err(), "the connection audit let in goes on");
    let after_off = sg.stats(Via::Agent, ID);
    assert!(after_off["no-rule"] > after["no-rule"], "{after:?}\n{after_off:?}");
}

// ---------------------------------------------------------------------------------
// 7. Metrics.

/// `GET path` on `addr` from namespace `ns`: (status line, body).
fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> (String, String) {
    let path = path.to_string();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, OPEN).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.lines().next().unwrap_or_default().to_string(), body.to_string())
    })
    .unwrap()
}

/// The value of the sample `name{labels}` (labels as written) in metrics text.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `run --metrics 127.0.0.1:PORT` serves `/metrics`: per-instance packets by reason
/// equal to `stats`, conntrack and map capacities; other paths get 404.
#[test]
fn metrics_endpoint_matches_stats() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _srv = tcp_server(&vm, 22, false).unwrap();
    let sg = Sg::new(&topo);
    let v4 = vm.ip(false);
    let addr = free_local_addr(topo.host());
    sg.apply(Via::Direct, &desired(&vm, false, &quiet_rules()));
    let mut agent = sg.start_agent(&["--metrics", &addr.to_string()]);
    agent.wait_log("metrics on /metrics");

    send_udp(&remote, SocketAddr::new(v4, 7777), 13);
    assert!(tcp_open(&remote, v4, 22, OPEN));
    sleep_ms(300);
    let stats = sg.stats(Via::Agent, ID);
    let (status, body) = http_get(topo.host(), addr, "/metrics");
    let stats2 = sg.stats(Via::Agent, ID);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(stats["no-rule"] >= 13, "{stats:?}");
    for (reason, n) in &stats {
        if stats2[reason] != *n {
            continue; // moved meanwhile (neighbour discovery, say)
        }
        let verdict = if reason.starts_with("allow") { "pass" } else { "drop" };
        let series =
            format!("sg_packets_total{{instance=\"{ID}\",reason=\"{reason}\",verdict=\"{verdict}\"}}");
        assert_eq!(sample(&body, &series), Some(*n), "{series} vs stats {stats:?}:\n{body}");
    }
    let cap = sg_daemon::dataplane::Capacity::default();
    for (series, want) in [
        ("sg_conntrack_capacity{table=\"confirmed\"}", cap.ct_entries),
        ("sg_conntrack_capacity{table=\"unconfirmed\"}", cap.ct_new_entries),
        ("sg_map_capacity{map=\"IFACE_POLICY\"}", cap.interfaces),
        ("sg_map_capacity{map=\"PORT_CLASS\"}", cap.port_class_entries),
        ("sg_map_capacity{map=\"PORT_CLASS_EXACT\"}", cap.port_class_entries),
        ("sg_map_capacity{map=\"CIDR_ALLOW\"}", cap.cidr_entries),
        ("sg_map_capacity{map=\"CIDR_ALLOW_EXACT\"}", cap.cidr_entries),
        ("sg_map_entries{map=\"IFACE_POLICY\"}", 1),
    ] {
        let want = u64::from(want);
        assert_eq!(sample(&body, series), Some(want), "{series}:\n{body}");
    }
    // The agent counts the commands it serves.
    let commands = sample(&body, "sg_agent_commands_total").expect("sg_agent_commands_total");
    sg.ok(Via::Agent, &["ls"]);
    let (_, body2) = http_get(topo.host(), addr, "/metrics");
    assert_eq!(sample(&body2, "sg_agent_commands_total"), Some(commands + 2), "stats + ls since:\n{body2}");

    for path in ["/", "/metric", "/foo/metrics"] {
        let (status, _) = http_get(topo.host(), addr, path);
        assert_eq!(status, "HTTP/1.1 404 Not Found", "GET {path}");
    }
    agent.ensure_running();
}
