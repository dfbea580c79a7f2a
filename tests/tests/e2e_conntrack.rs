//! End-to-end connection tracking (issue 3): the real `sg-daemon` binary enforces
//! security groups on the taps of a namespace topology, and real TCP/UDP/ICMP
//! traffic shows that replies of connections a rule allowed come back without a rule,
//! that nothing unsolicited rides on them, that ICMP errors of a tracked flow reach
//! the instance, that removing a rule cuts its established connections while other
//! rule changes do not, and what `sg-daemon flows` reports.
//!
//! Every test first shows that the traffic it will later expect to be blocked flows
//! while nothing is applied (or, for rule changes, that the probe does see a live
//! connection), so a data plane that enforces nothing cannot pass.
//!
//! Crafted packets (unsolicited echo replies, ICMP errors) are sent with scapy from the
//! remote's namespace and observed with tcpdump on the instance's own `eth0`, i.e.
//! after the data plane on the tap had its say; the per-instance verdict counters
//! (`sg-daemon stats -s ID -o json`) tell which reason passed or dropped them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sg_tests::daemon::SgDaemon;
use sg_tests::*;

use sg_tests::EchoConn as Conn;

/// Timeout of probes expected to succeed (a veth answers in milliseconds).
const OPEN: Duration = Duration::from_secs(3);
/// Timeout of probes expected to be dropped: ample for a veth, cheap to wait out.
const DROPPED: Duration = Duration::from_millis(1200);
/// How long a crafted packet that should have been dropped is still waited for once
/// a packet sent after it has arrived (see [`send_and_flush`]).
const GRACE: Duration = Duration::from_millis(300);

/// The Linux defaults without "ingress IPv4 icmp 0.0.0.0/0": no rule lets an ICMP
/// message in, so whatever ICMP reaches the instance came through the tracker.
const LINUX_WITHOUT_ICMP: &[&str] = &[
    "{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 443, port_max: 443, cidr: 0.0.0.0/0}",
    "{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 22, port_max: 22, cidr: 0.0.0.0/0}",
    "{direction: egress, ethertype: IPv4, protocol: any, cidr: 0.0.0.0/0}",
    "{direction: egress, ethertype: IPv6, protocol: any, cidr: \"::/0\"}",
];

// ---------------------------------------------------------------------------------
// Desired-state files.

/// One instance of a desired-state file, with its default rules.
fn instance(id: &str, ep: &Endpoint) -> String {
    format!("  - id: \"{id}\"\n    interface: {}\n    os: linux\n", ep.tap())
}

/// One instance with explicit rules, given as YAML flow mappings.
fn instance_with_rules(id: &str, ep: &Endpoint, rules: &[&str]) -> String {
    let mut s = instance(id, ep);
    s.push_str("    rules:\n");
    for r in rules {
        s.push_str(&format!("      - {r}\n"));
    }
    s
}

fn desired(instances: &[String]) -> String {
    format!("instances:\n{}", instances.concat())
}

/// `stats -s ID -o json`: the instance's packets per verdict reason.
#[track_caller]
fn stats_of(sg: &SgDaemon, id: &str) -> BTreeMap<String, u64> {
    let text = sg.ok(&["stats", "-s", id, "-o", "json"]);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`stats -s {id} -o json` printed no map ({e}): {text}"))
}

/// How much counter `reason` grew between two [`stats_of`] snapshots.
fn grew(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, reason: &str) -> u64 {
    let get = |m: &BTreeMap<String, u64>| m.get(reason).copied().unwrap_or(0);
    get(after).saturating_sub(get(before))
}

/// `flows -s ID -o json`, parsed: one object per flow.
#[track_caller]
fn flows_of(sg: &SgDaemon, id: &str) -> Vec<serde_json::Value> {
    let text = sg.ok(&["flows", "-s", id, "-o", "json"]);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`flows -s {id} -o json` printed no array ({e}): {text}"))
}

/// The flow of `flows` between `instance_addr` and `remote_addr` (as the listing
/// writes them, e.g. `10.80.1.2:22`, `[fd00:80:1::2]:40000`, `10.80.1.2 id 7`).
fn find_flow<'a>(
    flows: &'a [serde_json::Value],
    instance_addr: &str,
    remote_addr: &str,
) -> Option<&'a serde_json::Value> {
    flows.iter().find(|f| f["instance_addr"] == instance_addr && f["remote_addr"] == remote_addr)
}

/// `ADDR:PORT` as the flows listing writes it.
fn endpoint_text(addr: SocketAddr) -> String {
    addr.to_string()
}

/// The UUID of the instance's ingress rule for tcp port `port`.
#[track_caller]
fn ingress_tcp_rule(sg: &SgDaemon, id: &str, port: u16) -> String {
    let rules = sg.ls_rules(id);
    let rule = rules
        .iter()
        .find(|r| r["direction"] == "ingress" && r["protocol"] == "tcp" && r["port_min"] == port)
        .unwrap_or_else(|| panic!("no ingress tcp {port} rule on {id}: {rules:?}"));
    rule["id"].as_str().unwrap_or_else(|| panic!("rule without id: {rule}")).to_string()
}

// ---------------------------------------------------------------------------------
// Traffic.

/// Runs TCP probes concurrently; fails listing every probe whose outcome differs from
/// the expected one (`Echoed` if `open`, a silent drop otherwise).
#[track_caller]
fn expect_tcp(what: &str, probes: &[(&Endpoint, IpAddr, u16, bool)]) {
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|&(from, dst, port, open)| {
                s.spawn(move || {
                    tcp_probe(from, None, SocketAddr::new(dst, port), if open { OPEN } else { DROPPED })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread panicked")).collect()
    });
    let mut wrong = Vec::new();
    for (&(from, dst, port, open), outcome) in probes.iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_else(|e| panic!("{what}: harness failure: {e:#}"));
        let want = if open { TcpOutcome::Echoed } else { TcpOutcome::TimedOut };
        if outcome != want {
            let dst = SocketAddr::new(dst, port);
            wrong.push(format!("  {} -> {dst}: {outcome:?}, expected {want:?}", from.name()));
        }
    }
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
}

/// A python3 that can import scapy (Debian's python3-scapy lives in /usr/bin's).
fn python() -> &'static str {
    static PY: OnceLock<&'static str> = OnceLock::new();
    PY.get_or_init(|| {
        for cand in ["/usr/bin/python3", "python3"] {
            let mut cmd = Command::new(cand);
            cmd.args(["-c", "import scapy.all"]);
            if run_command(cmd, Duration::from_secs(30)).is_ok_and(|o| o.status.success()) {
                return cand;
            }
        }
        panic!("no python3 with scapy found (install python3-scapy)")
    })
}

/// Sends `packets` (scapy expressions of IP/IPv6 packets, in order) from `from`'s
/// `eth0` to its gateway, the host.
#[track_caller]
fn scapy_send(from: &Endpoint, packets: &[String]) {
    let script = format!(
        "import struct\n\
         from scapy.all import Ether, IP, IPv6, ICMP, ICMPv6PacketTooBig, ICMPv6EchoReply, TCP, Raw, sendp\n\
         pkts = [\n{}\n]\n\
         sendp([Ether(src='{}', dst='{}') / p for p in pkts], iface='eth0', verbose=False)\n",
        packets.join(",\n"),
        from.mac(),
        from.tap_mac()
    );
    let out = from
        .ns()
        .exec_output(&[python(), "-c", &script], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("running scapy in {}: {e:#}", from.ns()));
    assert!(
        out.status.success(),
        "scapy in {} failed ({}):\n{}\nscript:\n{script}",
        from.ns(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An IPv4 "fragmentation needed" (type 3 code 4, next-hop MTU `mtu`) from `remote` to
/// `inst`, quoting the IP header and the first 8 bytes of a TCP segment `inst:sport ->
/// remote:dport`.
fn frag_needed(remote: &Endpoint, inst: &Endpoint, sport: u16, dport: u16, mtu: u16) -> String {
    let (r, i) = (remote.ipv4(), inst.ipv4());
    format!(
        "IP(src='{r}', dst='{i}') / ICMP(type=3, code=4, nexthopmtu={mtu}) / \
         IP(src='{i}', dst='{r}', proto=6, flags='DF') / Raw(struct.pack('!HHI', {sport}, {dport}, 1))"
    )
}

/// The IPv6 "packet too big" counterpart of [`frag_needed`].
fn packet_too_big(remote: &Endpoint, inst: &Endpoint, sport: u16, dport: u16, mtu: u16) -> String {
    let (r, i) = (remote.ipv6(), inst.ipv6());
    format!(
        "IPv6(src='{r}', dst='{i}') / ICMPv6PacketTooBig(mtu={mtu}) / \
         IPv6(src='{i}', dst='{r}', nh=6) / Raw(struct.pack('!HHI', {sport}, {dport}, 1))"
    )
}

/// An ICMP (v4 or v6) echo reply (`request`: echo request) from `remote` to `inst`.
fn echo(remote: &Endpoint, inst: &Endpoint, v6: bool, request: bool, id: u16) -> String {
    let (r, i) = (remote.ip(v6), inst.ip(v6));
    match (v6, request) {
        (false, false) => {
            format!("IP(src='{r}', dst='{i}') / ICMP(type=0, id={id}, seq=7) / Raw(b'sg-tests')")
        }
        (false, true) => {
            format!("IP(src='{r}', dst='{i}') / ICMP(type=8, id={id}, seq=9) / Raw(b'sg-tests')")
        }
        (true, false) => {
            format!("IPv6(src='{r}', dst='{i}') / ICMPv6EchoReply(id={id}, seq=7, data=b'sg-tests')")
        }
        (true, true) => unimplemented!("not needed"),
    }
}

/// Sends `packets` from `remote` to `inst`, then a TCP SYN to `inst`'s port 22 (open
/// under every rule set these tests drop crafted packets under), and waits until that
/// SYN shows up on `sniffer` plus [`GRACE`]: the packets sent before it along the same
/// path have arrived by then, if they were let through.
#[track_caller]
fn send_and_flush(remote: &Endpoint, inst: &Endpoint, sniffer: &Sniffer, packets: &[String]) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let sport = 40100 + NEXT.fetch_add(1, Ordering::Relaxed);
    let (r, i) = (remote.ipv4(), inst.ipv4());
    let mut all = packets.to_vec();
    all.push(format!("IP(src='{r}', dst='{i}') / TCP(sport={sport}, dport=22, flags='S', seq=1)"));
    scapy_send(remote, &all);
    let marker = format!("{r}.{sport} > {i}.22: Flags [S]");
    assert!(sniffer.saw_all(&[&marker], OPEN), "the marker SYN did not reach the instance; {sniffer}");
    std::thread::sleep(GRACE);
}

/// tcpdump on an endpoint's `eth0`: what really reached (or left) it.
struct Sniffer {
    child: ChildGuard,
    ns: String,
}

impl Sniffer {
    /// Starts capturing packets matching `filter` (and the markers of
    /// [`send_and_flush`]); returns once tcpdump listens.
    #[track_caller]
    fn start(ep: &Endpoint, filter: &str) -> Sniffer {
        let filter = format!("({filter}) or (tcp dst port 22 and tcp[tcpflags] == tcp-syn)");
        let mut child = ep
            .ns()
            .spawn(&["tcpdump", "-i", "eth0", "-n", "-l", "-v", "--immediate-mode", &filter])
            .unwrap_or_else(|e| panic!("starting tcpdump in {}: {e:#}", ep.ns()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !child.stderr().contains("listening on") {
            if let Err(e) = child.ensure_running() {
                panic!("tcpdump in {}: {e:#}", ep.ns());
            }
            assert!(Instant::now() < deadline, "tcpdump in {} did not start: {}", ep.ns(), child.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        Sniffer { child, ns: ep.ns().name().to_string() }
    }

    /// Everything captured so far.
    fn text(&self) -> String {
        self.child.stdout()
    }

    /// Whether every one of `needles` shows up in the capture within `within`.
    fn saw_all(&self, needles: &[&str], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text();
            if needles.iter().all(|n| text.contains(n)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl std::fmt::Display for Sniffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcpdump on eth0 of {}:\n{}", self.ns, self.text())
    }
}

// ---------------------------------------------------------------------------------
// Tests.

/// 1. TCP: the instance's connections out get their replies (SYN-ACK and data have no
///    ingress rule: only the tracker lets them in), IPv4 and IPv6, while the same
///    remote cannot open a connection to the instance's port 80.
#[test]
fn outbound_tcp_replies_come_back_unsolicited_connections_do_not() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _servers: Vec<TcpServer> = [&vm, &remote]
        .iter()
        .flat_map(|ep| [false, true].map(|v6| tcp_server(*ep, 80, v6).unwrap()))
        .collect();
    let sg = SgDaemon::for_topology(&topo).unwrap();
    let (vm4, vm6, r4, r6) = (vm.ip(false), vm.ip(true), remote.ip(false), remote.ip(true));

    expect_tcp("before apply", &[(&remote, vm4, 80, true), (&remote, vm6, 80, true)]);
    sg.apply_yaml(&desired(&[instance("ct1", &vm)]));
    let before = stats_of(&sg, "ct1");

    expect_tcp(
        "defaults",
        &[(&vm, r4, 80, true), (&vm, r6, 80, true), (&remote, vm4, 80, false), (&remote, vm6, 80, false)],
    );
    let after = stats_of(&sg, "ct1");
    // Per connection: SYN-ACK and the echo (at least) rode the flow.
    assert!(grew(&before, &after, "allow-tracked") >= 4, "before {before:?}\nafter {after:?}");
    assert!(grew(&before, &after, "no-rule") >= 2, "the inbound SYNs: before {before:?}\nafter {after:?}");
}

/// 2. UDP: a DNS-like request/response from the instance works (IPv4 and IPv6); an
///    unsolicited datagram from the remote to the instance's UDP server is dropped.
#[test]
fn udp_request_response_out_unsolicited_datagram_in_dropped() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _dns = [false, true].map(|v6| udp_echo_server(&remote, 53, v6).unwrap());
    let sg = SgDaemon::for_topology(&topo).unwrap();
    let (vm4, vm6, r4, r6) = (vm.ip(false), vm.ip(true), remote.ip(false), remote.ip(true));

    {
        // Nothing applied: the remote's datagrams reach the instance's server.
        let servers = [false, true].map(|v6| udp_echo_server(&vm, 5300, v6).unwrap());
        for dst in [vm4, vm6] {
            assert!(udp_request(&remote, dst, 5300, OPEN), "before apply: udp {dst}:5300");
        }
        assert!(servers.iter().all(|s| !s.peers().is_empty()));
    }

    sg.apply_yaml(&desired(&[instance("ct2", &vm)]));
    let before = stats_of(&sg, "ct2");
    for dst in [r4, r6] {
        assert!(udp_request(&vm, dst, 53, OPEN), "instance -> {dst}:53: the response did not come back");
    }
    let after = stats_of(&sg, "ct2");
    assert!(grew(&before, &after, "allow-tracked") >= 2, "before {before:?}\nafter {after:?}");
    let flows = flows_of(&sg, "ct2");
    for dst in [r4, r6] {
        let remote_side = endpoint_text(SocketAddr::new(dst, 53));
        let flow = flows
            .iter()
            .find(|f| f["protocol"] == "udp" && f["remote_addr"] == remote_side.as_str())
            .unwrap_or_else(|| panic!("no udp flow to {remote_side} in {flows:?}"));
        assert_eq!((&flow["state"], &flow["opened_by"]), (&"replied".into(), &"out".into()), "{flow}");
    }

    let servers = [false, true].map(|v6| udp_echo_server(&vm, 5300, v6).unwrap());
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let probes: Vec<_> = [vm4, vm6]
            .map(|dst| {
                let remote = &remote;
                s.spawn(move || udp_probe(remote, None, SocketAddr::new(dst, 5300), DROPPED))
            })
            .into_iter()
            .collect();
        probes.into_iter().map(|p| p.join().unwrap().unwrap()).collect()
    });
    assert_eq!(outcomes, [UdpOutcome::NoReply, UdpOutcome::NoReply], "unsolicited udp to the instance");
    for server in &servers {
        assert!(server.peers().is_empty(), "unsolicited datagrams reached {server:?}: {:?}", server.peers());
    }
    let last = stats_of(&sg, "ct2");
    assert!(grew(&after, &last, "no-rule") >= 2, "before {after:?}\nafter {last:?}");
}

/// 3. ICMP echo: with no ingress icmp rule the instance's pings still get their
///    replies (IPv4 and IPv6), while an unsolicited echo reply, and an echo request
///    reusing the identifier of the instance's own ping flow, are dropped.
#[test]
fn ping_out_gets_replies_unsolicited_echo_dropped() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let sg = SgDaemon::for_topology(&topo).unwrap();
    let (vm4, r4, r6) = (vm.ip(false), remote.ip(false), remote.ip(true));
    const UNSOLICITED_ID: u16 = 0xbeef;
    let crafted = |id: u16| {
        [
            echo(&remote, &vm, false, false, UNSOLICITED_ID),
            echo(&remote, &vm, true, false, UNSOLICITED_ID),
            echo(&remote, &vm, false, true, id),
        ]
    };
    let reply_seen = format!("echo reply, id {UNSOLICITED_ID}, seq 7");

    // Nothing applied: the crafted packets (and pings) reach the instance.
    assert!(ping(&remote, vm4, 1, OPEN), "before apply: ping {vm4}");
    let sniffer = Sniffer::start(&vm, "icmp or icmp6");
    scapy_send(&remote, &crafted(4242));
    assert!(
        sniffer.saw_all(&[&reply_seen, "ICMP6, echo reply", "echo request, id 4242, seq 9"], OPEN),
        "before apply, the crafted packets should arrive; {sniffer}"
    );
    drop(sniffer);

    let yaml = desired(&[instance_with_rules("ct3", &vm, LINUX_WITHOUT_ICMP)]);
    sg.apply_yaml(&yaml);
    // No ingress icmp rule: the remote's pings are dropped.
    assert_eq!(ping_probe(&remote, None, vm4, 1, DROPPED).unwrap(), 0, "ping {vm4} without an icmp rule");

    // An unsolicited echo reply (no ping flow at all yet) is dropped.
    let before = stats_of(&sg, "ct3");
    let sniffer = Sniffer::start(&vm, "icmp or icmp6");
    send_and_flush(&remote, &vm, &sniffer, &crafted(4242)[..2]);
    assert!(
        !sniffer.text().contains("echo reply"),
        "unsolicited echo replies reached the instance; {sniffer}"
    );
    let after = stats_of(&sg, "ct3");
    assert!(grew(&before, &after, "no-rule") >= 2, "before {before:?}\nafter {after:?}");

    // The instance's own pings get their replies: only the tracker can let them in.
    for dst in [r4, r6] {
        assert_eq!(ping_probe(&vm, None, dst, 3, OPEN).unwrap(), 3, "instance pings {dst}");
    }
    let after_ping = stats_of(&sg, "ct3");
    assert!(grew(&after, &after_ping, "allow-tracked") >= 6, "before {after:?}\nafter {after_ping:?}");

    // An echo *request* with the identifier of the instance's ping flow does not ride it.
    let flows = flows_of(&sg, "ct3");
    let ping_flow = flows
        .iter()
        .find(|f| {
            f["protocol"] == "icmp"
                && f["remote_addr"].as_str().is_some_and(|r| r.starts_with(&format!("{r4} id ")))
        })
        .unwrap_or_else(|| panic!("no icmp flow to {r4}: {flows:?}"));
    assert_eq!(ping_flow["opened_by"], "out", "{ping_flow}");
    let id: u16 = ping_flow["instance_addr"]
        .as_str()
        .and_then(|a| a.rsplit(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no ping identifier in {ping_flow}"));
    let sniffer = Sniffer::start(&vm, "icmp");
    send_and_flush(&remote, &vm, &sniffer, &crafted(id)[2..]);
    assert!(
        !sniffer.text().contains("echo request"),
        "an echo request with the ping flow's id {id} reached the instance; {sniffer}"
    );
    let last = stats_of(&sg, "ct3");
    assert!(grew(&after_ping, &last, "no-rule") >= 1, "before {after_ping:?}\nafter {last:?}");
}

/// 4. ICMP errors: "fragmentation needed" and IPv6 "packet too big" quoting an
///    established connection of the instance reach it (`allow-related`, with no rule
///    letting ICMP in); the same errors quoting a flow that does not exist are dropped.
#[test]
fn icmp_errors_of_a_tracked_flow_reach_the_instance() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let servers = [false, true].map(|v6| tcp_server(&remote, 80, v6).unwrap());
    let sg = SgDaemon::for_topology(&topo).unwrap();
    // Told apart by their MTU: 1400 quotes the live connection, 1300 a flow that
    // does not exist (sent first, so by the time the 1400s arrive a 1300 would have).
    let (live, ghost) = ("mtu 1400", "mtu 1300");
    let errors = |v4_port: u16, v6_port: u16| {
        [
            frag_needed(&remote, &vm, v4_port ^ 1, 80, 1300),
            packet_too_big(&remote, &vm, v6_port ^ 1, 80, 1300),
            frag_needed(&remote, &vm, v4_port, 80, 1400),
            packet_too_big(&remote, &vm, v6_port, 80, 1400),
        ]
    };
    let filter = "icmp[icmptype] == icmp-unreach or (icmp6 and ip6[40] == 2)";

    // Nothing applied: errors quoting no flow at all reach the instance.
    let sniffer = Sniffer::start(&vm, filter);
    scapy_send(&remote, &errors(40001, 40001)[..2]);
    assert!(
        sniffer.saw_all(&[&format!("need to frag ({ghost})"), &format!("packet too big, {ghost}")], OPEN),
        "before apply, the ICMP errors should arrive; {sniffer}"
    );
    drop(sniffer);

    sg.apply_yaml(&desired(&[instance_with_rules("ct4", &vm, LINUX_WITHOUT_ICMP)]));
    let mut conns = [false, true].map(|v6| Conn::open(&vm, SocketAddr::new(remote.ip(v6), 80)));
    for c in &mut conns {
        assert!(c.exchange(OPEN).is_ok(), "{}: no echo", c.label);
    }
    let [p4, p6] = [&conns[0], &conns[1]].map(|c| c.local().port());
    for (server, c) in servers.iter().zip(&conns) {
        assert!(server.peers().contains(&c.local()), "{:?} not among {:?}", c.local(), server.peers());
    }
    let before = stats_of(&sg, "ct4");

    let sniffer = Sniffer::start(&vm, filter);
    scapy_send(&remote, &errors(p4, p6));
    assert!(
        sniffer.saw_all(&[&format!("need to frag ({live})"), &format!("packet too big, {live}")], OPEN),
        "the ICMP errors quoting the live connections (ports {p4}, {p6}) did not arrive; {sniffer}"
    );
    // The errors quoting no flow were sent first, along the same path.
    std::thread::sleep(GRACE);
    assert!(!sniffer.text().contains(ghost), "ICMP errors quoting no flow reached the instance; {sniffer}");
    let after = stats_of(&sg, "ct4");
    assert!(grew(&before, &after, "allow-related") >= 2, "before {before:?}\nafter {after:?}");
    assert!(grew(&before, &after, "no-rule") >= 2, "before {before:?}\nafter {after:?}");
    // The connections themselves are unharmed.
    for c in &mut conns {
        assert!(c.exchange(OPEN).is_ok(), "{}: no echo after the ICMP errors", c.label);
    }
}

/// 5. Removing the rule that allowed an established connection cuts it at its next
///    packet: by `sg-daemon rm` (tcp 22) and by applying a file without the rule
///    (tcp 443). The other connection, whose rule stays, carries on each time.
#[test]
fn removing_the_rule_cuts_its_established_connection() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _servers = [22, 443].map(|port| tcp_server(&vm, port, false).unwrap());
    let sg = SgDaemon::for_topology(&topo).unwrap();
    let vm4 = vm.ip(false);

    sg.apply_yaml(&desired(&[instance("ct5", &vm)]));
    let mut ssh = Conn::open(&remote, SocketAddr::new(vm4, 22));
    let mut https = Conn::open(&remote, SocketAddr::new(vm4, 443));
    let ssh_key = (endpoint_text(SocketAddr::new(vm4, 22)), endpoint_text(ssh.local()));
    for c in [&mut ssh, &mut https] {
        assert!(c.exchange(OPEN).is_ok(), "{}: no echo", c.label);
    }
    let flows = flows_of(&sg, "ct5");
    let flow =
        find_flow(&flows, &ssh_key.0, &ssh_key.1).unwrap_or_else(|| panic!("{ssh_key:?} in {flows:?}"));
    assert_eq!(flow["state"], "established", "{flow}");
    let before = stats_of(&sg, "ct5");

    // `rm` the tcp 22 rule: the ssh connection is cut, https goes on.
    let id = ingress_tcp_rule(&sg, "ct5", 22);
    let out = sg.ok(&["rm", &id]);
    assert!(out.contains(&format!("deleted {id}")), "{out}");
    assert!(https.exchange(OPEN).is_ok(), "{}: cut by removing an unrelated rule", https.label);
    assert!(!ssh.exchange(DROPPED).is_ok(), "{}: still echoes after its rule was removed", ssh.label);
    let after = stats_of(&sg, "ct5");
    assert!(grew(&before, &after, "revoked") >= 1, "before {before:?}\nafter {after:?}");
    let flows = flows_of(&sg, "ct5");
    assert!(find_flow(&flows, &ssh_key.0, &ssh_key.1).is_none(), "revoked flow still listed: {flows:?}");
    expect_tcp("tcp 22 removed", &[(&remote, vm4, 22, false), (&remote, vm4, 443, true)]);

    // A file without the tcp 443 rule (nor 22): the https connection is cut too.
    let rules = [
        "{direction: ingress, ethertype: IPv4, protocol: icmp, cidr: 0.0.0.0/0}",
        "{direction: egress, ethertype: IPv4, protocol: any, cidr: 0.0.0.0/0}",
        "{direction: egress, ethertype: IPv6, protocol: any, cidr: \"::/0\"}",
    ];
    sg.apply_yaml(&desired(&[instance_with_rules("ct5", &vm, &rules)]));
    assert!(!https.exchange(DROPPED).is_ok(), "{}: still echoes after its rule was removed", https.label);
    let last = stats_of(&sg, "ct5");
    assert!(grew(&after, &last, "revoked") >= 1, "before {after:?}\nafter {last:?}");
}

/// 6. Long-lived connections (one opened by the remote to port 22, one opened by the
///    instance) keep working across rule changes that still allow them: an unrelated
///    rule added and removed 5 times, then the tcp 22 rule replaced by another rule
///    that covers the connection. Removing the rule at last does cut it.
#[test]
fn long_lived_connection_survives_rule_changes_that_still_allow_it() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let vm = topo.add_instance("vm").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _ssh = tcp_server(&vm, 22, false).unwrap();
    let _web = tcp_server(&remote, 80, false).unwrap();
    let sg = SgDaemon::for_topology(&topo).unwrap();

    sg.apply_yaml(&desired(&[instance("ct6", &vm)]));
    let mut inbound = Conn::open(&remote, SocketAddr::new(vm.ip(false), 22));
    let mut outbound = Conn::open(&vm, SocketAddr::new(remote.ip(false), 80));
    let mut exchange_all = |when: &str| {
        for c in [&mut inbound, &mut outbound] {
            assert!(c.exchange(OPEN).is_ok(), "{}: no echo {when}", c.label);
        }
    };
    exchange_all("at first");
    let before = stats_of(&sg, "ct6");

    for round in 1..=5 {
        let out = sg.ok(&["create", "-s", "ct6", "--in", "--proto", "tcp", "-p", "8080"]);
        exchange_all(&format!("after adding tcp 8080 (round {round})"));
        sg.ok(&["rm", out.trim()]);
        exchange_all(&format!("after removing tcp 8080 (round {round})"));
    }

    // tcp 22 from anywhere replaced by tcp 20-25 from the remotes' network.
    let rules = [
        "{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 20, port_max: 25, cidr: 10.90.0.0/16}",
        "{direction: egress, ethertype: IPv4, protocol: tcp, cidr: 0.0.0.0/0}",
    ];
    sg.apply_yaml(&desired(&[instance_with_rules("ct6", &vm, &rules)]));
    exchange_all("after replacing the rules by others that still allow them");
    let after = stats_of(&sg, "ct6");
    assert_eq!(grew(&before, &after, "revoked"), 0, "before {before:?}\nafter {after:?}");
    let flows = flows_of(&sg, "ct6");
    let established = flows.iter().filter(|f| f["protocol"] == "tcp" && f["state"] == "established").count();
    assert_eq!(established, 2, "{flows:?}");

    // The same probe does notice a cut: remove what allowed the inbound connection.
    sg.apply_yaml(&desired(&[instance_with_rules("ct6", &vm, &rules[1..])]));
    assert!(!inbound.exchange(DROPPED).is_ok(), "{}: still echoes after its rule was removed", inbound.label);
    assert!(outbound.exchange(OPEN).is_ok(), "{}: cut although egress tcp is still allowed", outbound.label);
}

/// 7. `sg-daemon flows -s ID -o json` lists an instance's established flows, both
///    directions, with a sensible age and idle time, and only that instance's flows;
///    a closed connection is no longer listed as established.
#[test]
fn flows_lists_established_connections_with_their_age() {
    require_root!();
    let mut topo = Topology::new_unique().unwrap();
    let a = topo.add_instance("a").unwrap();
    let b = topo.add_instance("b").unwrap();
    let remote = topo.add_remote("remote").unwrap();
    let _ssh = tcp_server(&a, 22, false).unwrap();
    let _web = tcp_server(&remote, 80, false).unwrap();
    let sg = SgDaemon::for_topology(&topo).unwrap();
    sg.apply_yaml(&desired(&[instance("ct7a", &a), instance("ct7b", &b)]));
    assert!(flows_of(&sg, "ct7a").is_empty(), "flows before any traffic");

    let web = SocketAddr::new(remote.ip(false), 80);
    // Every flow below is created after `t0` and before `t1`.
    let t0 = Instant::now();
    let mut out_a = Conn::open(&a, web);
    let mut in_a = Conn::open(&remote, SocketAddr::new(a.ip(false), 22));
    let mut out_b = Conn::open(&b, web);
    for c in [&mut out_a, &mut in_a, &mut out_b] {
        assert!(c.exchange(OPEN).is_ok(), "{}: no echo", c.label);
    }
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    // Only the outbound flow is used again: it is less idle than old.
    let t2 = Instant::now();
    assert!(out_a.exchange(OPEN).is_ok(), "{}: no echo", out_a.label);

    let out_key = (endpoint_text(out_a.local()), endpoint_text(web));
    let in_key = (endpoint_text(SocketAddr::new(a.ip(false), 22)), endpoint_text(in_a.local()));
    let listing = Instant::now();
    let flows = flows_of(&sg, "ct7a");
    let listed = Instant::now();
    // Bounds from the test's clock: (at least, at most) seconds since `t`.
    let since = |t: Instant| ((listing - t).as_secs_f64() - 0.05, (listed - t).as_secs_f64() + 0.05);
    assert_eq!(flows.len(), 2, "{flows:?}");
    let (age_min, age_max) = (since(t1).0, since(t0).1);
    for (key, opened_by, (idle_min, idle_max)) in
        [(&out_key, "out", (0.0, since(t2).1)), (&in_key, "in", (since(t1).0, since(t0).1))]
    {
        let f = find_flow(&flows, &key.0, &key.1).unwrap_or_else(|| panic!("{key:?} not in {flows:?}"));
        assert_eq!(f["instance"], "ct7a", "{f}");
        assert_eq!(f["protocol"], "tcp", "{f}");
        assert_eq!(f["opened_by"], opened_by, "{f}");
        assert_eq!(f["state"], "established", "{f}");
        assert_eq!(f["confirmed"], true, "{f}");
        let (age, idle) = (f["age_s"].as_f64().unwrap(), f["idle_s"].as_f64().unwrap());
        assert!((age_min..=age_max).contains(&age), "age {age} s, expected {age_min:.2}..={age_max:.2}: {f}");
        assert!(
            (idle_min..=idle_max).contains(&idle) && idle <= age,
            "idle {idle} s, expected {idle_min:.2}..={idle_max:.2} and <= age {age}: {f}"
        );
        if opened_by == "out" {
            // Used again 1.5 s after it was opened.
            let used_after = (t2 - t1).as_secs_f64() - 0.05;
            assert!(age - idle >= used_after, "age {age} s, idle {idle} s: {f}");
        }
    }
    let flows_b = flows_of(&sg, "ct7b");
    assert_eq!(flows_b.len(), 1, "{flows_b:?}");
    assert_eq!(flows_b[0]["instance_addr"], endpoint_text(out_b.local()), "{flows_b:?}");
    assert_eq!(flows_b[0]["state"], "established", "{flows_b:?}");

    // Ages grow with time, at the clock's pace.
    std::thread::sleep(Duration::from_millis(500));
    let relisting = Instant::now();
    let later = flows_of(&sg, "ct7a");
    let relisted = Instant::now();
    let age_of = |flows: &[serde_json::Value]| {
        find_flow(flows, &out_key.0, &out_key.1).and_then(|f| f["age_s"].as_f64()).expect("flow listed")
    };
    let (age0, age1) = (age_of(&flows), age_of(&later));
    let (min, max) = ((relisting - listed).as_secs_f64() - 0.05, (relisted - listing).as_secs_f64() + 0.05);
    assert!(
        (min..=max).contains(&(age1 - age0)),
        "age went from {age0} to {age1} s in {min:.2}..={max:.2} s"
    );

    // Closed (FIN both ways): no longer established.
    drop(out_a);
    std::thread::sleep(Duration::from_millis(300));
    let flows = flows_of(&sg, "ct7a");
    if let Some(f) = find_flow(&flows, &out_key.0, &out_key.1) {
        assert_ne!(f["state"], "established", "closed connection: {f}");
    }
    let f = find_flow(&flows, &in_key.0, &in_key.1).unwrap_or_else(|| panic!("{in_key:?} not in {flows:?}"));
    assert_eq!(f["state"], "established", "{f}");
}
