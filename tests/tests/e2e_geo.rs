//! End-to-end geo-blocking (issue 6): the real `sg-daemon` binary applies a `geo_block`
//! whose MaxMind database is written here with `mmdb-writer` (known networks per
//! country, both record layouts), and real TCP traffic from a remote client with
//! source addresses in "blocked" and "allowed" countries shows what gets through.
//!
//! Test networks (documentation ranges, routed to the remote by `Endpoint::add_addr`):
//!
//! | network | country |
//! | --- | --- |
//! | 203.0.113.0/24, 2001:db8:c0::/48 | CN (blocked by default) |
//! | 192.0.2.0/24 | CN (GeoLite2 layout: only `registered_country`) |
//! | 198.51.100.0/24, 2001:db8:5::/48 | US (GeoLite2 layout: registered in CN, `country` wins) |
//! | 100.64.0.0/16, 2001:db8:de::/48 | DE (blocked by default, not probed) |
//!
//! Every test first checks that what it later expects to be blocked connects while
//! nothing is applied, so a data plane that blocks nothing cannot pass. Blocked probes
//! must end in a silent drop (`TimedOut`: a server listens on every probed port), and
//! the servers' accept logs are checked too: a blocked source must never have been
//! accepted at all.
//!
//! Two tests are marked `SG BUG` and fail until the daemon is fixed:
//! `relative_database_path_is_resolved_once` and (ignored: it needs the real
//! database) `real_database_over_half_the_capacity`. Measurements on the real
//! database: `cargo test -p sg-tests --test e2e_geo -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use ipnet::IpNet;
use mmdb_writer::{IpVersion, Ipv4Aliasing, Writer};
use rand::Rng;
use serde::Serialize;
use sg_tests::daemon::SgDaemon;
use sg_tests::*;

/// Timeout of probes expected to succeed (a veth answers in milliseconds).
const OPEN: Duration = Duration::from_secs(3);
/// Timeout of probes expected to be dropped: ample for a veth, cheap to wait out.
const DROPPED: Duration = Duration::from_millis(1200);
/// The remote-desktop port the geo block closes by default.
const RDP: u16 = 9833;

const CN_A: &str = "203.0.113.5";
const CN_B: &str = "203.0.113.6";
const CN_REGISTERED: &str = "192.0.2.5";
const US: &str = "198.51.100.5";
const CN6_A: &str = "2001:db8:c0::5";
const CN6_B: &str = "2001:db8:c0::6";
const US6: &str = "2001:db8:5::5";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Writes a measurement straight to stderr (past libtest's capture), so the numbers
/// show in every run.
fn report(msg: &str) {
    let _ = writeln!(std::io::stderr(), "e2e_geo: {msg}");
}

// ---------------------------------------------------------------------------------
// Databases.

/// The record layouts the daemon reads.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// MaxMind GeoLite2-Country: `country.iso_code`, `registered_country.iso_code`.
    GeoLite2,
    /// geo-whois-asn-country: `{"country_code": "CN"}`.
    Flat,
}

/// One network of a test database. In the flat layout the code is `country`, else
/// `registered`; the GeoLite2 layout stores both as given.
#[derive(Clone, Copy)]
struct Net {
    net: &'static str,
    country: Option<&'static str>,
    registered: Option<&'static str>,
}

const fn net(net: &'static str, country: &'static str, registered: &'static str) -> Net {
    Net { net, country: Some(country), registered: Some(registered) }
}

/// The networks of the tests, see the module docs.
const NETS: &[Net] = &[
    net("203.0.113.0/24", "CN", "CN"),
    Net { net: "192.0.2.0/24", country: None, registered: Some("CN") },
    net("198.51.100.0/24", "US", "CN"),
    net("100.64.0.0/16", "DE", "DE"),
    net("2001:db8:c0::/48", "CN", "US"),
    net("2001:db8:5::/48", "US", "US"),
    net("2001:db8:de::/48", "DE", "DE"),
    // A record without any country (anycast): never loaded.
    Net { net: "10.200.0.0/16", country: None, registered: None },
];

/// Prefixes of NETS in the default blocked countries (none adjacent, so none merge).
const NETS_BLOCKED_PREFIXES: u64 = 5;

#[derive(Serialize)]
struct FlatRecord {
    country_code: &'static str,
}

#[derive(Serialize)]
struct MaxMindRecord {
    continent: Place,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<Place>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_country: Option<Place>,
}

#[derive(Serialize)]
struct Place {
    #[serde(skip_serializing_if = "Option::is_none")]
    iso_code: Option<&'static str>,
    geoname_id: u32,
    names: BTreeMap<&'static str, &'static str>,
}

fn place(iso_code: &'static str, geoname_id: u32) -> Place {
    Place { iso_code: Some(iso_code), geoname_id, names: [("en", iso_code), ("zh-CN", "国家")].into() }
}

/// A database of `nets` in `layout` (IPv6 tree with IPv4 at `::/96`, as both real
/// databases are).
fn database(layout: Layout, nets: &[Net]) -> Vec<u8> {
    let name = match layout {
        Layout::GeoLite2 => "GeoLite2-Country",
        Layout::Flat => "geo-whois-asn-country",
    };
    let mut db = Writer::builder(name)
        .ip_version(IpVersion::V6)
        .ipv4_aliasing(Ipv4Aliasing::Enabled)
        .build_epoch(UNIX_EPOCH + Duration::from_secs(1_750_000_000))
        .build();
    for (i, n) in nets.iter().enumerate() {
        let cidr: IpNet = n.net.parse().unwrap();
        match layout {
            Layout::Flat => match n.country.or(n.registered) {
                Some(code) => db.insert(cidr, &FlatRecord { country_code: code }).unwrap(),
                None => db.insert(cidr, &BTreeMap::from([("asn", 13335u32)])).unwrap(),
            },
            Layout::GeoLite2 => {
                let id = 1000 + i as u32;
                let record = MaxMindRecord {
                    continent: Place { iso_code: None, geoname_id: 6255147, names: [("en", "Asia")].into() },
                    country: n.country.map(|c| place(c, id)),
                    registered_country: n.registered.map(|c| place(c, id + 100)),
                };
                db.insert(cidr, &record).unwrap();
            }
        }
    }
    db.to_bytes().unwrap()
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sg-e2e-geo-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `path` the way an updater should: write a temporary file, then rename.
fn install(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------
// Desired state.

/// The Windows defaults spelled out, plus tcp 9833 over IPv6 (the defaults have no
/// IPv6 ingress, so without it IPv6 9833 would be closed by the rules anyway). Given to
/// the Linux instance too: same rules, only the OS differs.
const RULES: &[&str] = &[
    "{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 443, port_max: 443}",
    "{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 22, port_max: 22}",
    "{direction: ingress, ethertype: IPv4, protocol: icmp}",
    "{direction: egress, ethertype: IPv4, protocol: any}",
    "{direction: egress, ethertype: IPv6, protocol: any}",
    "{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 9833, port_max: 9833}",
    "{direction: ingress, ethertype: IPv6, protocol: tcp, port_min: 9833, port_max: 9833}",
];

const WIN_ID: &str = "892486";
const LINUX_ID: &str = "937648";

fn instance(id: &str, ep: &Endpoint, os: &str, exempt: &[&str]) -> String {
    let mut s = format!("  - id: \"{id}\"\n    interface: {}\n    os: {os}\n    rules:\n", ep.tap());
    for r in RULES {
        s.push_str(&format!("      - {r}\n"));
    }
    if !exempt.is_empty() {
        s.push_str(&format!("    geo_exempt: [{}]\n", exempt.join(", ")));
    }
    s
}

/// A `geo_block` section: the database and any extra lines (`countries: [...]`, ...).
fn geo_block(database: &Path, extra: &[&str]) -> String {
    let mut s = format!("geo_block:\n  database: \"{}\"\n", database.display());
    for line in extra {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

// ---------------------------------------------------------------------------------
// Traffic.

/// One TCP probe from the remote, from `src`, and whether it must get through.
struct Probe {
    src: IpAddr,
    dst: SocketAddr,
    open: bool,
}

fn open(src: &str, dst: IpAddr, port: u16) -> Probe {
    Probe { src: ip(src), dst: SocketAddr::new(dst, port), open: true }
}

fn blocked(src: &str, dst: IpAddr, port: u16) -> Probe {
    Probe { src: ip(src), dst: SocketAddr::new(dst, port), open: false }
}

/// Runs every probe concurrently; fails listing every wrong outcome (`Echoed` if open,
/// a silent drop otherwise).
#[track_caller]
fn expect_tcp(what: &str, remote: &Endpoint, probes: &[Probe]) {
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| {
                s.spawn(move || tcp_probe(remote, Some(p.src), p.dst, if p.open { OPEN } else { DROPPED }))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread panicked")).collect()
    });
    let mut wrong = Vec::new();
    for (p, outcome) in probes.iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_else(|e| panic!("{what}: harness failure: {e:#}"));
        let want = if p.open { TcpOutcome::Echoed } else { TcpOutcome::TimedOut };
        if outcome != want {
            wrong.push(format!("  {} -> {}: {outcome:?}, expected {want:?}", p.src, p.dst));
        }
    }
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
}

/// TCP echo servers on `ports`, IPv4 and IPv6, in `ep`, by (port, v6).
fn servers(ep: &Endpoint, ports: &[u16]) -> BTreeMap<(u16, bool), TcpServer> {
    let mut out = BTreeMap::new();
    for &port in ports {
        for v6 in [false, true] {
            out.insert((port, v6), tcp_server(ep, port, v6).unwrap());
        }
    }
    out
}

/// How many connections from `src` the server accepted.
fn accepted_from(server: &TcpServer, src: &str) -> usize {
    server.peers().iter().filter(|p| p.ip() == ip(src)).count()
}

// ---------------------------------------------------------------------------------
// The fixture: a Windows and a Linux instance behind one host, a remote with
// addresses in every test network, echo servers on 22, 443 and 9833.

struct Geo {
    sg: SgDaemon,
    win: Endpoint,
    linux: Endpoint,
    remote: Endpoint,
    scratch: Scratch,
    win_servers: BTreeMap<(u16, bool), TcpServer>,
    _linux_servers: BTreeMap<(u16, bool), TcpServer>,
    topo: Topology,
}

impl Geo {
    fn new() -> Self {
        let mut topo = Topology::new_unique().unwrap();
        let win = topo.add_instance("win").unwrap();
        let linux = topo.add_instance("linux").unwrap();
        let remote = topo.add_remote("remote").unwrap();
        for addr in [CN_A, CN_B, CN_REGISTERED, US, CN6_A, CN6_B, US6] {
            remote.add_addr(addr).unwrap();
        }
        let win_servers = servers(&win, &[22, 443, RDP]);
        let _linux_servers = servers(&linux, &[22, 443, RDP]);
        let sg = SgDaemon::for_topology(&topo).unwrap();
        Geo { sg, win, linux, remote, scratch: Scratch::new(), win_servers, _linux_servers, topo }
    }

    /// The desired state: both instances (the Windows one with `exempt`), and `geo`.
    fn desired(&self, geo: &str, exempt: &[&str]) -> String {
        format!(
            "{geo}instances:\n{}{}",
            instance(WIN_ID, &self.win, "windows", exempt),
            instance(LINUX_ID, &self.linux, "linux", &[])
        )
    }

    /// `geo status`, parsed.
    #[track_caller]
    fn geo_status(&self) -> serde_json::Value {
        let text = self.sg.ok(&["geo", "status"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`geo status` printed no JSON ({e}): {text}"))
    }

    /// `stats -s ID -o json`, parsed.
    #[track_caller]
    fn stats(&self, id: &str) -> BTreeMap<String, u64> {
        let text = self.sg.ok(&["stats", "-s", id, "-o", "json"]);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`stats -s {id} -o json`: no map ({e}): {text}"))
    }

    /// Before anything is applied every probe of the tests connects.
    #[track_caller]
    fn everything_connects(&self) {
        let (w4, w6, l4, l6) =
            (self.win.ip(false), self.win.ip(true), self.linux.ip(false), self.linux.ip(true));
        let mut probes = Vec::new();
        for src in [CN_A, CN_B, CN_REGISTERED, US] {
            for dst in [w4, l4] {
                for port in [22, 443, RDP] {
                    probes.push(open(src, dst, port));
                }
            }
        }
        for src in [CN6_A, CN6_B, US6] {
            for dst in [w6, l6] {
                probes.push(open(src, dst, RDP));
            }
        }
        expect_tcp("before apply", &self.remote, &probes);
    }

    /// Probes the block as a default `geo_block` sets it up (no exemption).
    #[track_caller]
    fn expect_default_block(&self, what: &str) {
        let (w4, w6, l4, l6) =
            (self.win.ip(false), self.win.ip(true), self.linux.ip(false), self.linux.ip(true));
        expect_tcp(
            what,
            &self.remote,
            &[
                blocked(CN_A, w4, RDP),
                blocked(CN_B, w4, RDP),
                blocked(CN_REGISTERED, w4, RDP),
                open(US, w4, RDP),
                // Only the geo-blocked port.
                open(CN_A, w4, 22),
                open(CN_A, w4, 443),
                open(CN_REGISTERED, w4, 22),
                // applies_to defaults to windows: the Linux instance, same rules, is reached.
                open(CN_A, l4, RDP),
                open(CN_REGISTERED, l4, RDP),
                blocked(CN6_A, w6, RDP),
                blocked(CN6_B, w6, RDP),
                open(US6, w6, RDP),
                open(CN6_A, l6, RDP),
            ],
        );
    }

    /// Counters of the blocked sources at the Windows 9833 servers, to check that a
    /// blocked source is never accepted later on.
    fn rdp_accepts(&self, srcs: &[&str]) -> Vec<usize> {
        srcs.iter().map(|s| accepted_from(&self.win_servers[&(RDP, ip(s).is_ipv6())], s)).collect()
    }
}

// ---------------------------------------------------------------------------------
// 1 and 2: the block on real traffic, in both record layouts.

fn block_on_real_traffic(layout: Layout) {
    let g = Geo::new();
    let db = g.scratch.path("country.mmdb");
    install(&db, &database(layout, NETS));
    g.everything_connects();

    let plan = g.sg.apply_yaml(&g.desired(&geo_block(&db, &[]), &[]));
    assert!(plan.contains("instances: 2 added"), "{plan}");
    let accepted_before = g.rdp_accepts(&[CN_A, CN_B, CN_REGISTERED, CN6_A, CN6_B]);
    g.expect_default_block(&format!("{layout:?}: default geo_block"));
    assert_eq!(
        g.rdp_accepts(&[CN_A, CN_B, CN_REGISTERED, CN6_A, CN6_B]),
        accepted_before,
        "{layout:?}: a blocked source was accepted by the Windows 9833 server"
    );

    let status = g.geo_status();
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["prefixes_loaded"], NETS_BLOCKED_PREFIXES, "{status}");
    assert_eq!(status["database"], db.display().to_string(), "{status}");
    assert_eq!(status["protocol"], 6, "{status}");
    assert_eq!(status["ports"], serde_json::json!(["9833-9833"]), "{status}");
    assert_eq!(status["instances"][WIN_ID]["geo_block"], true, "{status}");
    assert_eq!(status["instances"][LINUX_ID]["geo_block"], false, "{status}");

    // Exemptions on the Windows instance let exactly those sources in.
    g.sg.apply_yaml(&g.desired(&geo_block(&db, &[]), &["203.0.113.5/32", "\"2001:db8:c0::5/128\""]));
    let (w4, w6) = (g.win.ip(false), g.win.ip(true));
    expect_tcp(
        &format!("{layout:?}: geo_exempt {CN_A}/32 and {CN6_A}/128"),
        &g.remote,
        &[
            open(CN_A, w4, RDP),
            blocked(CN_B, w4, RDP),
            blocked(CN_REGISTERED, w4, RDP),
            open(US, w4, RDP),
            open(CN6_A, w6, RDP),
            blocked(CN6_B, w6, RDP),
            open(US6, w6, RDP),
        ],
    );

    // Dropping the exemptions closes the door again.
    g.sg.apply_yaml(&g.desired(&geo_block(&db, &[]), &[]));
    expect_tcp(
        &format!("{layout:?}: exemptions removed"),
        &g.remote,
        &[blocked(CN_A, w4, RDP), blocked(CN6_A, w6, RDP), open(US, w4, RDP)],
    );

    // No geo_block any more: everyone reaches 9833.
    g.sg.apply_yaml(&g.desired("", &[]));
    assert_eq!(g.geo_status()["enabled"], false);
    expect_tcp(
        &format!("{layout:?}: geo_block removed"),
        &g.remote,
        &[open(CN_A, w4, RDP), open(CN_REGISTERED, w4, RDP), open(CN6_B, w6, RDP)],
    );
}

/// GeoLite2 layout: `country.iso_code`, a network with only `registered_country`
/// (192.0.2.0/24, blocked), and networks whose `country` differs from their
/// `registered_country` (the country wins: 198.51.100.0/24 is US though registered in
/// CN, 2001:db8:c0::/48 is CN though registered in the US).
#[test]
fn geolite2_layout_blocks_on_real_traffic() {
    require_root!();
    block_on_real_traffic(Layout::GeoLite2);
}

/// Flat `country_code` layout (geo-whois-asn-country).
#[test]
fn flat_layout_blocks_on_real_traffic() {
    require_root!();
    block_on_real_traffic(Layout::Flat);
}

/// `applies_to: all` and explicit countries/ports: the Linux instance is blocked too,
/// on the listed ports only, for the listed countries only.
#[test]
fn scope_countries_and_ports() {
    require_root!();
    let g = Geo::new();
    let db = g.scratch.path("country.mmdb");
    install(&db, &database(Layout::Flat, NETS));
    g.everything_connects();
    // US only (not a default country), ports 22 and 443-9833, everyone.
    let geo = geo_block(&db, &["countries: [us]", "ports: [22, \"443-9833\"]", "applies_to: all"]);
    g.sg.apply_yaml(&g.desired(&geo, &[]));
    let (w4, l4, l6) = (g.win.ip(false), g.linux.ip(false), g.linux.ip(true));
    expect_tcp(
        "countries [us], ports 22 and 443-9833, applies_to all",
        &g.remote,
        &[
            blocked(US, w4, 22),
            blocked(US, w4, 443),
            blocked(US, w4, RDP),
            blocked(US, l4, 22),
            blocked(US, l4, RDP),
            blocked(US6, l6, RDP),
            open(CN_A, w4, RDP),
            open(CN_A, l4, 22),
            open(CN6_A, l6, RDP),
        ],
    );
    let status = g.geo_status();
    // 198.51.100.0/24 and 2001:db8:5::/48.
    assert_eq!(status["prefixes_loaded"], 2, "{status}");
    assert_eq!(status["ports"], serde_json::json!(["22-22", "443-9833"]), "{status}");
    assert_eq!(status["instances"][LINUX_ID]["geo_block"], true, "{status}");
}

// ---------------------------------------------------------------------------------
// 3: swapping the database under live traffic.

/// One connection attempt of a client loop.
struct Attempt {
    start: Instant,
    end: Instant,
    outcome: TcpOutcome,
}

/// Connects from `src` to `dst` again and again until `stop`, recording every attempt.
fn hammer(
    remote: &Endpoint,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
    stop: &AtomicBool,
    log: &Mutex<Vec<Attempt>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let outcome = tcp_probe(remote, Some(src), dst, timeout)
            .unwrap_or_else(|e| panic!("client {src}: harness failure: {e:#}"));
        log.lock().unwrap().push(Attempt { start, end: Instant::now(), outcome });
        if outcome == TcpOutcome::Echoed {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sets the flag when dropped, so client loops end even when an assertion fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Outcomes of the attempts of `log` started at or after `since`.
fn outcomes_since(log: &Mutex<Vec<Attempt>>, since: Instant) -> Vec<TcpOutcome> {
    log.lock().unwrap().iter().filter(|a| a.start >= since).map(|a| a.outcome).collect()
}

/// Waits until `log` holds `n` attempts started at or after `since` (at most 20 s).
#[track_caller]
fn wait_attempts(log: &Mutex<Vec<Attempt>>, since: Instant, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while outcomes_since(log, since).len() < n {
        assert!(Instant::now() < deadline, "{what}: fewer than {n} attempts in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the daemon with `RUST_LOG=info`; asserts success; returns (stderr, duration).
#[track_caller]
fn timed_info(sg: &SgDaemon, args: &[&str]) -> (String, Duration) {
    let mut cmd = sg.command(args);
    cmd.env("RUST_LOG", "info");
    let started = Instant::now();
    let out = run_command(cmd, sg_tests::daemon::DAEMON_TIMEOUT).unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "`sg-daemon {}` failed: {stderr}", args.join(" "));
    (stderr, took)
}

/// DB1 lists 203.0.113.0/24 as US, DB2 as CN; 192.0.2.0/24 is CN in both. While
/// clients connect to 9833 over and over, the file is replaced (temp file + rename)
/// and `geo reload` run; later a plain re-`apply` of the unchanged YAML picks up
/// replaced files in both directions. The always-CN client never gets through, the
/// US client never fails, and the newly-CN client is blocked from the moment the
/// reload returns.
#[test]
fn database_swap_under_live_traffic() {
    require_root!();
    let mut g = Geo::new();
    let db = g.scratch.path("country.mmdb");
    let net = |net, country| Net { net, country: Some(country), registered: None };
    let db1 = database(
        Layout::Flat,
        &[net("203.0.113.0/24", "US"), net("192.0.2.0/24", "CN"), net("198.51.100.0/24", "US")],
    );
    let db2 = database(
        Layout::Flat,
        &[net("203.0.113.0/24", "CN"), net("192.0.2.0/24", "CN"), net("198.51.100.0/24", "US")],
    );
    install(&db, &db1);
    let w4 = g.win.ip(false);
    let rdp = SocketAddr::new(w4, RDP);
    expect_tcp("before apply", &g.remote, &[open(CN_A, w4, RDP), open(CN_REGISTERED, w4, RDP)]);
    let yaml = g.desired(&geo_block(&db, &[]), &[]);
    let yaml_path = g.sg.write_file("swap.yaml", &yaml);
    let yaml_path = yaml_path.to_string_lossy();
    g.sg.ok(&["apply", "-f", &yaml_path]);
    expect_tcp("DB1", &g.remote, &[open(CN_A, w4, RDP), blocked(CN_REGISTERED, w4, RDP), open(US, w4, RDP)]);
    let always_accepted = accepted_from(&g.win_servers[&(RDP, false)], CN_REGISTERED);

    // A re-apply with nothing changed does not re-read the database.
    let (log, _) = timed_info(&g.sg, &["apply", "-f", &yaml_path]);
    assert!(!log.contains("geo database read"), "unchanged database re-read:\n{log}");

    // An established connection from the newly-CN network, of a remote of its own.
    let persistent = persistent_connection(&mut g.topo, "persist", "203.0.113.9", rdp);
    let g = g;

    let stop = AtomicBool::new(false);
    let (always, newly, us) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let (reload_took, apply_back_took, apply_again_took) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // Four always-CN clients for density; each attempt sends one SYN.
        for _ in 0..4 {
            s.spawn(|| hammer(&g.remote, ip(CN_REGISTERED), rdp, Duration::from_millis(300), &stop, &always));
        }
        s.spawn(|| hammer(&g.remote, ip(CN_A), rdp, Duration::from_secs(1), &stop, &newly));
        s.spawn(|| hammer(&g.remote, ip(US), rdp, OPEN, &stop, &us));

        let t0 = Instant::now();
        wait_attempts(&newly, t0, 5, "newly-CN client before the swap");
        wait_attempts(&always, t0, 8, "always-CN clients before the swap");

        // DB2 in place, then `geo reload`.
        let reload_start = Instant::now();
        assert!(echoes(&persistent, OPEN), "the established connection broke before the swap");
        install(&db, &db2);
        let (_, reload_took) = timed_info(&g.sg, &["geo", "reload"]);
        let reloaded = Instant::now();
        // The geo block wins over tracked flows: the established connection is cut.
        assert!(
            !echoes(&persistent, Duration::from_millis(1500)),
            "an established connection from a newly-CN source survived `geo reload`"
        );
        wait_attempts(&newly, reloaded, 3, "newly-CN client after the reload");

        // DB1 back, a plain apply of the same file: 203.0.113.0/24 is allowed again.
        let back_start = Instant::now();
        install(&db, &db1);
        let (log, apply_back_took) = timed_info(&g.sg, &["apply", "-f", &yaml_path]);
        assert!(log.contains("geo database read"), "replaced database not re-read by apply:\n{log}");
        let applied_back = Instant::now();
        wait_attempts(&newly, applied_back, 5, "newly-CN client after DB1 came back");

        // DB2 again through apply: blocked again.
        let again_start = Instant::now();
        install(&db, &db2);
        let (_, apply_again_took) = timed_info(&g.sg, &["apply", "-f", &yaml_path]);
        let applied_again = Instant::now();
        wait_attempts(&newly, applied_again, 3, "newly-CN client after DB2 came back");
        wait_attempts(&always, applied_again, 8, "always-CN clients at the end");
        let end = Instant::now();

        // Newly-CN: through with DB1, blocked from the moment the reload returned,
        // through once the apply of DB1 returned, blocked once the apply of DB2 did.
        // (Attempts that overlap a command may go either way.)
        for (what, from, to, want) in [
            ("with DB1, before the swap", t0, reload_start, TcpOutcome::Echoed),
            ("after `geo reload` of DB2 returned", reloaded, back_start, TcpOutcome::TimedOut),
            ("after `apply` with DB1 back returned", applied_back, again_start, TcpOutcome::Echoed),
            ("after `apply` with DB2 again returned", applied_again, end, TcpOutcome::TimedOut),
        ] {
            let got = log_between(&newly, from, to);
            assert!(
                !got.is_empty() && got.iter().all(|o| *o == want),
                "newly-CN client {what}: expected only {want:?}, got {got:?}"
            );
        }
        (reload_took, apply_back_took, apply_again_took)
    });

    // The always-CN clients: never once through, not even a handshake.
    let always = always.into_inner().unwrap();
    let through: Vec<_> =
        always.iter().filter(|a| a.outcome != TcpOutcome::TimedOut).map(|a| a.outcome).collect();
    assert!(
        through.is_empty(),
        "always-CN source got an answer in {} of {} attempts: {through:?}",
        through.len(),
        always.len()
    );
    assert_eq!(
        accepted_from(&g.win_servers[&(RDP, false)], CN_REGISTERED),
        always_accepted,
        "the 9833 server accepted a connection from the always-CN source during the swaps"
    );
    // The US client: never failed.
    let us = us.into_inner().unwrap();
    let failed: Vec<_> = us.iter().filter(|a| a.outcome != TcpOutcome::Echoed).map(|a| a.outcome).collect();
    assert!(failed.is_empty(), "US client failed {} of {} attempts: {failed:?}", failed.len(), us.len());
    report(&format!(
        "swap under traffic: `geo reload` took {reload_took:?}, `apply` (DB1 back) {apply_back_took:?}, \
         `apply` (DB2 again) {apply_again_took:?}; always-CN attempts {} (all dropped), US attempts {} (all through), \
         newly-CN attempts {}",
        always.len(),
        us.len(),
        newly.lock().unwrap().len()
    ));
}

/// A connection from `src` to `dst` that stays open, made from a new remote `name`
/// whose default route uses `src` as its source address.
fn persistent_connection(topo: &mut Topology, name: &str, src: &str, dst: SocketAddr) -> TcpStream {
    let ep = topo.add_remote(name).unwrap();
    ep.add_addr(src).unwrap();
    let gw = ep.gateway_v4().to_string();
    ep.ns().ip(&["route", "replace", "default", "via", &gw, "dev", "eth0", "src", src]).unwrap();
    let stream = ep.ns().run(move || TcpStream::connect_timeout(&dst, OPEN)).unwrap().unwrap();
    assert_eq!(stream.local_addr().unwrap().ip(), ip(src), "persistent connection from the wrong source");
    assert!(echoes(&stream, OPEN), "persistent connection from {src}: no echo");
    stream
}

/// Whether a payload sent on `stream` comes back within `timeout`.
fn echoes(mut stream: &TcpStream, timeout: Duration) -> bool {
    const PAYLOAD: &[u8] = b"sg geo persistent connection\n";
    let mut buf = [0u8; PAYLOAD.len()];
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(PAYLOAD).is_ok() && stream.read_exact(&mut buf).is_ok() && buf == PAYLOAD
}

/// Outcomes of attempts started in `[from, to)`.
/// Outcomes of the attempts made entirely within `[from, to)`: one that was still
/// retransmitting its SYN when the next command ran may go either way.
fn log_between(log: &Mutex<Vec<Attempt>>, from: Instant, to: Instant) -> Vec<TcpOutcome> {
    log.lock().unwrap().iter().filter(|a| a.start >= from && a.end < to).map(|a| a.outcome).collect()
}

// ---------------------------------------------------------------------------------
// 4: errors leave the block in force.

#[test]
fn refused_databases_leave_the_block_in_force() {
    require_root!();
    let g = Geo::new();
    let db = g.scratch.path("country.mmdb");
    let good = database(Layout::Flat, NETS);
    install(&db, &good);
    g.everything_connects();
    g.sg.apply_yaml(&g.desired(&geo_block(&db, &[]), &[]));
    g.expect_default_block("applied");
    let (w4, w6) = (g.win.ip(false), g.win.ip(true));
    // What must not change: the stored state, the links, the geo status (but for the
    // `blocked` counters, which move with the probes).
    let observe = || {
        let mut status = g.geo_status();
        status["instances"] = serde_json::Value::Null;
        (g.sg.state_bytes(), g.sg.links(), status)
    };
    let before = observe();
    assert_eq!(before.2["prefixes_loaded"], NETS_BLOCKED_PREFIXES, "{}", before.2);
    // Exit 1, `error: ` naming the problem, nothing changed.
    let refused = |args: &[&str], expect: &[&str]| {
        let stderr = g.sg.fails(args);
        for want in expect {
            assert!(stderr.contains(want), "`sg-daemon {}`: expected {want:?} in: {stderr}", args.join(" "));
        }
        assert!(observe() == before, "`sg-daemon {}` was refused but changed something", args.join(" "));
        stderr.trim().to_string()
    };
    let block_in_force = |what: &str| {
        expect_tcp(
            what,
            &g.remote,
            &[blocked(CN_A, w4, RDP), blocked(CN6_A, w6, RDP), open(US, w4, RDP), open(CN_A, w4, 22)],
        );
    };

    // A database path that does not exist.
    let missing = g.scratch.path("no-such-dir/GeoLite2-Country.mmdb");
    let path = g.sg.write_file("missing.yaml", &g.desired(&geo_block(&missing, &[]), &[]));
    let err = refused(
        &["apply", "-f", &path.to_string_lossy()],
        &[&missing.display().to_string(), "No such file or directory"],
    );
    report(&format!("missing database: {err}"));

    // A corrupt file: random bytes.
    let corrupt = g.scratch.path("corrupt.mmdb");
    let mut noise = vec![0u8; 64 * 1024];
    rand::rng().fill(&mut noise[..]);
    std::fs::write(&corrupt, &noise).unwrap();
    let path = g.sg.write_file("corrupt.yaml", &g.desired(&geo_block(&corrupt, &[]), &[]));
    let err = refused(
        &["apply", "-f", &path.to_string_lossy()],
        &[&corrupt.display().to_string(), "corrupt or not a MaxMind DB (.mmdb) file"],
    );
    report(&format!("corrupt database: {err}"));

    // An unknown country code.
    let path = g.sg.write_file("xx.yaml", &g.desired(&geo_block(&db, &["countries: [CN, XX]"]), &[]));
    let err = refused(
        &["apply", "-f", &path.to_string_lossy()],
        &["geo_block.countries", "unknown country code \"XX\""],
    );
    report(&format!("unknown country: {err}"));
    block_in_force("after the refused applies");

    // The database in force replaced by a broken one (a download cut short, then
    // garbage): `geo reload` refuses, the loaded set stays.
    for (what, bytes) in [("truncated", good[..good.len() / 2].to_vec()), ("random bytes", noise.clone())] {
        install(&db, &bytes);
        let err = refused(&["geo", "reload"], &[&db.display().to_string(), "corrupt or not a MaxMind DB"]);
        report(&format!("`geo reload` of a {what} database: {err}"));
    }
    block_in_force("after the refused reloads");
    // Repaired: the reload goes through, to the same set.
    install(&db, &good);
    g.sg.ok(&["geo", "reload"]);
    assert_eq!(g.geo_status()["prefixes_loaded"], NETS_BLOCKED_PREFIXES);
    block_in_force("after repairing the database");
}

// ---------------------------------------------------------------------------------
// 5: counters.

#[test]
fn blocked_attempts_are_counted() {
    require_root!();
    const N: u64 = 5;
    let g = Geo::new();
    let db = g.scratch.path("country.mmdb");
    install(&db, &database(Layout::GeoLite2, NETS));
    g.everything_connects();
    g.sg.apply_yaml(&g.desired(&geo_block(&db, &[]), &[]));
    let (w4, l4) = (g.win.ip(false), g.linux.ip(false));
    let win_before = g.stats(WIN_ID);
    let linux_before = g.stats(LINUX_ID);
    assert_eq!(win_before.get("geo-block").copied().unwrap_or(0), 0, "{win_before:?}");

    // N attempts to the Windows 9833 (each may retransmit its SYN), and N to the
    // Linux 9833, which passes.
    let mut probes: Vec<Probe> = (0..N).map(|_| blocked(CN_A, w4, RDP)).collect();
    probes.extend((0..N).map(|_| open(CN_A, l4, RDP)));
    expect_tcp("N attempts", &g.remote, &probes);

    let win = g.stats(WIN_ID);
    let linux = g.stats(LINUX_ID);
    let geo_win = win.get("geo-block").copied().unwrap_or(0);
    assert!(geo_win >= N, "Windows instance: {geo_win} geo-block drops for {N} attempts: {win:?}");
    // One SYN plus at most a few retransmissions per attempt within the probe timeout.
    assert!(geo_win <= 3 * N, "Windows instance: {geo_win} geo-block drops for {N} attempts: {win:?}");
    assert_eq!(linux.get("geo-block").copied().unwrap_or(0), 0, "Linux instance: {linux:?}");
    let linux_allowed = linux["allow-rule"] - linux_before.get("allow-rule").copied().unwrap_or(0);
    assert!(linux_allowed >= N, "Linux instance: {linux_allowed} allow-rule for {N} connections: {linux:?}");

    let status = g.geo_status();
    assert_eq!(status["prefixes_loaded"], NETS_BLOCKED_PREFIXES, "{status}");
    assert_eq!(status["instances"][WIN_ID]["blocked"], geo_win, "{status}");
    assert_eq!(status["instances"][LINUX_ID]["blocked"], 0, "{status}");
    let text = g.sg.ok(&["stats", "-s", WIN_ID]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("geo-block") && l.contains(&geo_win.to_string()) && l.ends_with("drop")),
        "{text}"
    );
    report(&format!("{N} blocked attempts counted as {geo_win} geo-block drops (SYN + retransmissions)"));
}

// ---------------------------------------------------------------------------------
// 6: a real database (optional).

/// The public-domain geo-whois-asn-country database: `/tmp/geo-whois-asn-country.mmdb`,
/// else the copy cached in `.tools/geo/`, else fetched with `npm pack` into it.
fn real_database() -> Option<PathBuf> {
    let tmp = PathBuf::from("/tmp/geo-whois-asn-country.mmdb");
    if tmp.is_file() {
        return Some(tmp);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let cache = root.join(".tools/geo");
    let cached = cache.join("geo-whois-asn-country.mmdb");
    if cached.is_file() {
        return Some(cached);
    }
    std::fs::create_dir_all(&cache).ok()?;
    let mut npm = std::process::Command::new("npm");
    npm.current_dir(&cache).args(["pack", "--silent", "@ip-location-db/geo-whois-asn-country-mmdb"]);
    let out = match run_command(npm, Duration::from_secs(120)) {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            report(&format!(
                "SKIPPED real database: `npm pack` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        Err(e) => {
            report(&format!("SKIPPED real database: npm unavailable: {e:#}"));
            return None;
        }
    };
    let tarball = String::from_utf8_lossy(&out.stdout).lines().last()?.trim().to_string();
    let mut tar = std::process::Command::new("tar");
    tar.current_dir(&cache).args(["-xzf", &tarball, "package/geo-whois-asn-country.mmdb"]);
    let out = run_command(tar, Duration::from_secs(60)).ok()?;
    if !out.status.success() {
        report(&format!(
            "SKIPPED real database: unpacking {tarball}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return None;
    }
    std::fs::rename(cache.join("package/geo-whois-asn-country.mmdb"), &cached).ok()?;
    let _ = std::fs::remove_dir_all(cache.join("package"));
    let _ = std::fs::remove_file(cache.join(&tarball));
    Some(cached)
}

/// `cargo test -p sg-tests --test e2e_geo -- --ignored --nocapture`
#[test]
#[ignore = "downloads or needs the real geo-whois-asn-country database; prints measurements"]
fn real_database_measurements() {
    require_root!();
    let Some(real) = real_database() else { return };
    let size = std::fs::metadata(&real).unwrap().len();
    let countries = sg_geo::CountryCode::default_blocked();
    let started = Instant::now();
    let prefixes = sg_geo::load_country_prefixes(&real, &countries).unwrap();
    let read_in_process = started.elapsed();
    let cn = sg_geo::load_country_prefixes(&real, &["CN".parse().unwrap()]).unwrap();

    let g = Geo::new();
    // A source in the first CN network of the database, and one nowhere.
    let cn_net = cn.v4.iter().find(|n| n.prefix_len() <= 30).expect("a CN IPv4 network");
    let cn_src = cn_net.hosts().nth(1).unwrap();
    g.remote.add_addr(&cn_src.to_string()).unwrap();
    let w4 = g.win.ip(false);
    let cn_src = cn_src.to_string();
    let primary = g.remote.ipv4().to_string();
    expect_tcp("before apply", &g.remote, &[open(&cn_src, w4, RDP), open(&primary, w4, RDP)]);

    // Baseline: the same instances without a geo block.
    g.sg.apply_yaml(&g.desired("", &[]));
    let (_, stats_no_geo_took) = timed_info(&g.sg, &["stats"]);
    let (_, apply_no_geo_took) = timed_info(
        &g.sg,
        &["apply", "-f", &g.sg.write_file("nogeo.yaml", &g.desired("", &[])).to_string_lossy()],
    );
    let path = g.sg.write_file("real.yaml", &g.desired(&geo_block(&real, &[]), &[]));
    let path = path.to_string_lossy();
    let (_, apply_took) = timed_info(&g.sg, &["apply", "-f", &path]);
    let status = g.geo_status();
    let loaded = status["prefixes_loaded"].as_u64().unwrap();
    assert_eq!(loaded as usize, prefixes.len(), "{status}");
    expect_tcp(
        "real database",
        &g.remote,
        &[blocked(&cn_src, w4, RDP), open(&primary, w4, RDP), open(&cn_src, w4, 22)],
    );
    let (_, reload_took) = timed_info(&g.sg, &["geo", "reload"]);
    let (unchanged_log, unchanged_took) = timed_info(&g.sg, &["apply", "-f", &path]);
    assert!(!unchanged_log.contains("geo database read"), "unchanged database re-read:\n{unchanged_log}");
    let (_, status_took) = timed_info(&g.sg, &["geo", "status"]);
    let (_, stats_took) = timed_info(&g.sg, &["stats"]);

    let pin = g.sg.bpffs().join("GEO_BLOCK");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&pin)
        .output()
        .expect("running bpftool");
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("bpftool map show pinned {}: {e}: {}", pin.display(), String::from_utf8_lossy(&out.stderr))
    });
    report(&format!(
        "real database {} ({size} bytes), countries {:?}: {} networks read of {} -> {} prefixes \
         ({} IPv4, {} IPv6) in {read_in_process:?} (test binary); prefixes_loaded {loaded}; \
         `apply` {apply_took:?}, `geo reload` {reload_took:?}, unchanged re-apply {unchanged_took:?}, `geo status` {status_took:?}, `stats` {stats_took:?} (without a geo block: `stats` {stats_no_geo_took:?}, re-apply {apply_no_geo_took:?}); \
         GEO_BLOCK max_entries {} bytes_memlock {} (~{} bytes/prefix); blocked source {cn_src} ({cn_net})",
        real.display(),
        sg_geo::DEFAULT_BLOCKED,
        prefixes.networks_read,
        prefixes.networks_total,
        prefixes.len(),
        prefixes.v4.len(),
        prefixes.v6.len(),
        map["max_entries"],
        map["bytes_memlock"],
        map["bytes_memlock"].as_u64().unwrap_or(0) / (loaded.max(1)),
    ));
}

/// The timeouts in `CT_CONFIG` of the fixture's data plane.
fn ct_timeouts(sg: &SgDaemon) -> sg_common::abi::CtTimeouts {
    let dp = sg_daemon::dataplane::Dataplane::open(sg.bpffs(), sg_daemon::dataplane::Capacity::default())
        .expect("opening the fixture's data plane");
    dp.timeouts().expect("reading CT_CONFIG")
}

/// The old and the new prefix set coexist in `GEO_BLOCK` (600,000 entries) during a
/// swap, so a set of more than half the capacity loads from scratch but can never be
/// reloaded; the apply fails cleanly and the old set stays in force.
///
/// SG BUG: the geo set does not get the up-front capacity check the rule maps get
/// (`apply::apply` checks ports/cidrs before touching anything): it fails in the
/// middle of `apply_geo`, after `dp.set_timeouts` has already written the new
/// `conntrack.timeouts` to `CT_CONFIG`. The apply exits 1 and state.yaml keeps the
/// old timeouts, but the kernel runs the new ones — "the running enforcement never
/// changes on error" does not hold. Fails at the `CT_CONFIG` assertion below.
#[test]
#[ignore = "needs the real geo-whois-asn-country database (npm); SG BUG: CT_CONFIG changed by a failed apply"]
fn real_database_over_half_the_capacity() {
    require_root!();
    let Some(real) = real_database() else { return };
    let g = Geo::new();
    let db = g.scratch.path("real.mmdb");
    let bytes = std::fs::read(&real).unwrap();
    install(&db, &bytes);
    let w4 = g.win.ip(false);
    let cn_src = "1.0.1.2";
    g.remote.add_addr(cn_src).unwrap();
    let primary = g.remote.ipv4().to_string();
    expect_tcp("before apply", &g.remote, &[open(cn_src, w4, RDP), open(&primary, w4, RDP)]);

    // The 7 default countries and the US: ~397,000 prefixes, loaded from scratch.
    let eight = geo_block(&db, &["countries: [CN, DE, FR, KR, NL, PL, RU, US]"]);
    g.sg.apply_yaml(&g.desired(&eight, &[]));
    let loaded = g.geo_status()["prefixes_loaded"].as_u64().unwrap();
    assert!(loaded > 300_000, "{loaded} prefixes: the database no longer exceeds half the capacity");
    let blocked_now = |what: &str| {
        assert_eq!(g.geo_status()["prefixes_loaded"], loaded, "{what}: another set in force");
        expect_tcp(what, &g.remote, &[blocked(cn_src, w4, RDP), open(&primary, w4, RDP)]);
    };
    blocked_now("8 countries loaded");

    // `geo reload` cannot write a second set of that size: refused, old set in force.
    let err = g.sg.refuses(&["geo", "reload"], &["GEO_BLOCK", "capacity 600000 geo_entries"]);
    report(&format!("`geo reload` of {loaded} prefixes: {}", err.trim()));
    blocked_now("after the refused reload");

    // The same through `apply` of a replaced database with new conntrack timeouts.
    let timeouts_before = ct_timeouts(&g.sg);
    install(&db, &bytes);
    let with_timeouts = format!("conntrack:\n  timeouts: {{udp: 7, icmp: 9}}\n{}", g.desired(&eight, &[]));
    let path = g.sg.write_file("timeouts.yaml", &with_timeouts);
    let err = g.sg.refuses(&["apply", "-f", &path.to_string_lossy()], &["GEO_BLOCK", "capacity"]);
    report(&format!("`apply` of a replaced {loaded}-prefix database: {}", err.trim()));
    blocked_now("after the refused apply");
    // SG BUG: fails here — udp 7 / icmp 9 are in force although the apply was refused.
    assert_eq!(
        ct_timeouts(&g.sg),
        timeouts_before,
        "a refused apply changed the conntrack timeouts in the kernel"
    );
}

/// A relative `database` path is taken relative to the daemon's working directory at
/// `apply` time and stored as given, so the stored state only works from that
/// directory.
///
/// SG BUG: `geo::fingerprint`/`geo::plan` and `StateStore::save` keep the path as
/// written: after `apply -f` run in the database's directory with `database:
/// country.mmdb`, `geo reload` from any other directory fails ("geo_block.database
/// country.mmdb: cannot read: No such file or directory"), and so does the documented
/// restore after a reboot, `sg-daemon apply -f /var/lib/sg/state.yaml` — which then
/// restores no enforcement at all, rules included. Either refusing relative paths or
/// storing the resolved absolute path would do; fails at the `geo reload` below.
#[test]
fn relative_database_path_is_resolved_once() {
    require_root!();
    let g = Geo::new();
    let db = g.scratch.path("country.mmdb");
    install(&db, &database(Layout::Flat, NETS));
    let w4 = g.win.ip(false);
    expect_tcp("before apply", &g.remote, &[open(CN_A, w4, RDP)]);
    let path = g.sg.write_file("relative.yaml", &g.desired("geo_block:\n  database: country.mmdb\n", &[]));
    let mut cmd = g.sg.command(&["apply", "-f", &path.to_string_lossy()]);
    cmd.current_dir(&g.scratch.0);
    let out = run_command(cmd, sg_tests::daemon::DAEMON_TIMEOUT).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Refusing relative paths is fine, with a message that says so.
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("country.mmdb") && stderr.contains("relative"), "{stderr}");
        return;
    }
    expect_tcp("applied from the database's directory", &g.remote, &[blocked(CN_A, w4, RDP)]);
    // From elsewhere (the test's working directory): the stored state must still work.
    assert_ne!(std::env::current_dir().unwrap(), g.scratch.0);
    // SG BUG: fails here.
    g.sg.ok(&["geo", "reload"]);
    let state = g.sg.state_file();
    g.sg.ok(&["apply", "-f", &state.to_string_lossy()]);
    expect_tcp("state re-applied from elsewhere", &g.remote, &[blocked(CN_A, w4, RDP), open(US, w4, RDP)]);
}
