//! The test topology: a "hypervisor host" namespace with one veth per VM instance
//! (the host side is the "tap" the data plane attaches to) and per remote client.
//!
//! ```text
//!   {p}-vm1 ns                 {p}-host ns                      {p}-client ns
//!  eth0 10.80.1.2 ──veth── {p}i1 10.80.1.1   {p}r1 10.90.1.1 ──veth── eth0 10.90.1.2
//!       fd00:80:1::2            fd00:80:1::1  fd00:90:1::1              fd00:90:1::2
//! ```
//!
//! The host namespace routes between all of them (forwarding on for v4 and v6), so
//! without any eBPF everything can reach everything: tests attach the data plane to a
//! tap and observe what changes.
//!
//! Everything is done with the `ip` command, always with `-n NAMESPACE` or on a
//! namespace we created, so the machine's own interfaces are never touched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::cmd::{DEFAULT_TIMEOUT, run_command_checked};
use crate::netns::{NETNS_DIR, Netns};

/// Every namespace this harness creates starts with this; [`cleanup_stale`] never
/// looks at anything else.
pub const NS_PREFIX: &str = "sgt";

/// Longest accepted topology prefix: leaves room for the longest tap suffix ("i254")
/// within the kernel's 15-character interface-name limit.
const MAX_PREFIX_LEN: usize = 11;

/// Marker stored as the alias of `lo` in every namespace we create, recording the
/// owning process, so [`cleanup_stale`] can tell leftovers of dead runs from the live
/// namespaces of tests running in parallel (even in other processes).
const OWNER_TAG: &str = "sg-tests owner=";

/// A namespace without an owner marker is only deemed stale after this long (it may
/// be one being set up right now: the marker is written just after creation).
const UNMARKED_GRACE: Duration = Duration::from_secs(60);

/// Sysctls for every namespace we create.
/// - DAD off: addresses (link-local ones included) are usable at once, no 1-2 s wait.
/// - ping_group_range: lets the in-process ICMP probes use ping sockets.
/// - rp_filter off: routing is exactly what the topology says, whatever the root
///   namespace's defaults are (new namespaces may inherit them).
const COMMON_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.ping_group_range", "0 2147483647"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

/// The host routes between instances and remotes.
const HOST_SYSCTLS: &[(&str, &str)] = &[("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")];

/// Endpoints are hosts, not routers, whatever a new namespace inherits from the root
/// one (IPv4 settings may be inherited, see net.core.devconf_inherit_init_net).
const ENDPOINT_SYSCTLS: &[(&str, &str)] =
    &[("net.ipv4.ip_forward", "0"), ("net.ipv6.conf.all.forwarding", "0")];

/// Serialises `ip netns add/del`: concurrent first use of /run/netns by several
/// `ip` processes can race while setting up its shared mount.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn ip_netns(args: &[&str]) -> Result<()> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cmd = std::process::Command::new("ip");
    cmd.arg("netns").args(args);
    run_command_checked(cmd, DEFAULT_TIMEOUT).map(drop)
}

fn to_base36(mut n: u64, min_width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 && out.len() >= min_width {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// A topology prefix unique among all live test processes: `sgt` + the pid in base36
/// (fixed width, 5 chars) + a per-process counter in base36, e.g. `sgt00pdw3`.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{NS_PREFIX}{}{}", to_base36(u64::from(std::process::id()), 5), to_base36(u64::from(n), 1))
}

/// The start time (clock ticks since boot, field 22 of /proc/PID/stat) of `pid`;
/// with the pid it identifies a process even across pid reuse.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn owner_tag() -> String {
    let pid = std::process::id();
    format!("{OWNER_TAG}{pid} start={}", process_start_time(pid).unwrap_or(0))
}

/// Names of all namespaces in /run/netns.
fn list_netns() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Whether namespace `ns` was left behind by a harness run that is no longer alive.
fn is_stale(ns: &Netns) -> bool {
    let alias = ns.ip(&["-o", "link", "show", "dev", "lo"]).unwrap_or_default();
    if let Some(tag) = alias.find(OWNER_TAG).map(|at| &alias[at + OWNER_TAG.len()..]) {
        // "PID start=TICKS"
        let mut words = tag.split_whitespace();
        let pid = words.next().and_then(|p| p.parse::<u32>().ok());
        let start = words.next().and_then(|s| s.strip_prefix("start=")).and_then(|s| s.parse::<u64>().ok());
        if let (Some(pid), Some(start)) = (pid, start) {
            return process_start_time(pid) != Some(start);
        }
    }
    // No readable marker: crashed between creation and marking (or a broken mount).
    // The namespace file's mtime is its creation time.
    let age = std::fs::metadata(ns.path())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    age.is_some_and(|age| age > UNMARKED_GRACE)
}

/// Deletes leftovers of earlier crashed runs: namespaces whose name starts with
/// `prefix` (which must start with `sgt`, so only this harness's namespaces are
/// considered) and whose owning test process is gone. Namespaces of live processes —
/// tests running in parallel, here or in another process — are left alone. Returns the
/// names removed. Deleting a namespace also deletes the veths in it.
///
/// Call `cleanup_stale("sgt")` to sweep everything the harness may have leaked.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    ensure!(
        prefix.starts_with(NS_PREFIX),
        "refusing to clean namespaces with prefix {prefix:?}: only {NS_PREFIX}* ones are the harness's"
    );
    let mut removed = Vec::new();
    for name in list_netns()?.into_iter().filter(|n| n.starts_with(prefix)) {
        let ns = Netns::named(name);
        if ns.exists() && is_stale(&ns) {
            ip_netns(&["del", ns.name()]).with_context(|| format!("removing stale namespace {ns}"))?;
            removed.push(ns.name().to_string());
        }
    }
    Ok(removed)
}

/// Once per process, removes whatever earlier crashed runs leaked, so leaks heal
/// themselves without every test having to remember [`cleanup_stale`]. Safe to run
/// while other tests are live: only dead owners' namespaces go. Failures are printed,
/// not fatal — they must not fail unrelated tests.
fn sweep_once() {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| match cleanup_stale(NS_PREFIX) {
        Ok(removed) if !removed.is_empty() => {
            eprintln!("sg-tests: removed stale namespaces of dead runs: {}", removed.join(" "));
        }
        Ok(_) => {}
        Err(e) => eprintln!("sg-tests: sweeping stale namespaces: {e:#}"),
    });
}

/// Whether an endpoint plays a VM instance or a client on the Internet side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    /// A VM instance: its tap is where the security-group data plane attaches.
    Instance,
    /// A remote client (in reality behind the uplink); structurally the same.
    Remote,
}

impl EndpointKind {
    /// Second octet of the v4 subnet / second group of the v6 subnet.
    fn subnet(self) -> u8 {
        match self {
            EndpointKind::Instance => 80,
            EndpointKind::Remote => 90,
        }
    }

    /// Letter of the tap suffix.
    fn letter(self) -> char {
        match self {
            EndpointKind::Instance => 'i',
            EndpointKind::Remote => 'r',
        }
    }
}

/// One VM instance or remote client: a namespace whose `eth0` is veth-paired with a
/// tap in the host namespace.
///
/// Addressing for the n-th endpoint of a kind (n from 1): instance `10.80.n.2/24`,
/// `fd00:80:n::2/64`; remote `10.90.n.2/24`, `fd00:90:n::2/64`; the tap has `.1` /
/// `::1`, which is the endpoint's default gateway. (In the v6 address `n` is written
/// in hex: the 10th instance is `fd00:80:a::2`.)
///
/// A cheap-to-clone description; the [`Topology`] owns the namespaces.
#[derive(Debug, Clone)]
pub struct Endpoint {
    kind: EndpointKind,
    name: String,
    index: u8,
    ns: Netns,
    host: Netns,
    tap: String,
    mac: String,
    tap_mac: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl AsRef<Netns> for Endpoint {
    fn as_ref(&self) -> &Netns {
        &self.ns
    }
}

impl Endpoint {
    /// The name given to `add_instance` / `add_remote`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Instance or remote.
    pub fn kind(&self) -> EndpointKind {
        self.kind
    }

    /// Its number n among endpoints of its kind (1-based; appears in its subnet).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Its own namespace, `{prefix}-{name}`.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The host namespace its tap lives in.
    pub fn host_ns(&self) -> &Netns {
        &self.host
    }

    /// The host-side interface name (the "tap"), e.g. `sgt00pdw3i1`.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// The tap's ifindex in the host namespace.
    pub fn tap_ifindex(&self) -> Result<u32> {
        self.host.ifindex(&self.tap)
    }

    /// The interface name inside the endpoint: always `eth0` (of its own namespace).
    pub fn ifname(&self) -> &'static str {
        "eth0"
    }

    /// MAC address of the endpoint's `eth0`, e.g. `02:00:80:00:01:02`.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// MAC address of the tap, e.g. `02:00:80:00:01:01`.
    pub fn tap_mac(&self) -> &str {
        &self.tap_mac
    }

    /// Its primary IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// Its primary IPv6 address.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// Its primary address of the given family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 { self.ipv6.into() } else { self.ipv4.into() }
    }

    /// The tap's IPv4 address (its default gateway).
    pub fn gateway_v4(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.ipv4.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The tap's IPv6 address (its default gateway).
    pub fn gateway_v6(&self) -> Ipv6Addr {
        let mut segments = self.ipv6.segments();
        segments[7] = 1;
        Ipv6Addr::from(segments)
    }

    /// The subnet of its `eth0`, e.g. `10.80.1.0/24` or `fd00:80:1::/64`.
    pub fn subnet(&self, v6: bool) -> String {
        if v6 {
            let s = self.ipv6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        } else {
            let [a, b, c, _] = self.ipv4.octets();
            format!("{}/24", Ipv4Addr::new(a, b, c, 0))
        }
    }

    /// Adds an extra address, e.g. `"203.0.113.7/32"` or `"2001:db8:7::7/128"`, to the
    /// endpoint's `eth0`, and routes the whole CIDR to this endpoint in the host
    /// namespace — so a remote can originate traffic from chosen Internet addresses
    /// (CIDR rules, geo-blocking) with [`crate::tcp_connect_from`] and friends, and
    /// replies find their way back. A bare address means a /32 or /128. Returns the
    /// address, ready to use as a source.
    pub fn add_addr(&self, cidr: &str) -> Result<IpAddr> {
        let (addr, len) = parse_cidr(cidr)?;
        let with_len = format!("{addr}/{len}");
        let mut args = vec!["addr", "add", &with_len, "dev", "eth0"];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.ns.ip(&args).with_context(|| format!("adding {with_len} to {}", self.name))?;
        let net = format!("{}/{len}", network(addr, len));
        let via = self.ip(addr.is_ipv6()).to_string();
        // `replace`: several addresses of one CIDR may be added to the same endpoint.
        self.host
            .ip(&["route", "replace", &net, "via", &via, "dev", &self.tap])
            .with_context(|| format!("routing {net} to {} in the host namespace", self.name))?;
        Ok(addr)
    }
}

/// Parses "ADDR" or "ADDR/LEN".
fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8)> {
    let (addr, len) = match cidr.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (cidr, None),
    };
    let addr: IpAddr = addr.parse().with_context(|| format!("bad address in {cidr:?}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(len) => len.parse::<u8>().with_context(|| format!("bad prefix length in {cidr:?}"))?,
        None => max,
    };
    ensure!(len <= max, "prefix length {len} too long for {addr}");
    Ok((addr, len))
}

/// The network address of `addr/len`.
fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// A set of namespaces forming one test's network; deleted on drop.
///
/// Namespace names all start with the prefix, so tests can run in parallel as long as
/// each uses its own (see [`unique_prefix`] / [`Topology::new_unique`]).
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    host: Netns,
    /// Every namespace created, in creation order, for teardown.
    created: Vec<Netns>,
    endpoints: Vec<Endpoint>,
}

impl Topology {
    /// Creates the host namespace `{prefix}-host` with IPv4 and IPv6 forwarding on.
    ///
    /// `prefix` must be `sgt` followed by lowercase letters/digits, at most 11 chars
    /// in all (it is also the start of every tap name). Dead leftovers with the same
    /// prefix (from a crashed run) are removed first; a live one is an error.
    pub fn new(prefix: &str) -> Result<Self> {
        ensure!(
            prefix.len() > NS_PREFIX.len()
                && prefix.len() <= MAX_PREFIX_LEN
                && prefix.starts_with(NS_PREFIX)
                && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "topology prefix {prefix:?} must be {NS_PREFIX:?} + [a-z0-9], at most {MAX_PREFIX_LEN} chars"
        );
        sweep_once();
        cleanup_stale(&format!("{prefix}-"))?;
        let host = Netns::named(format!("{prefix}-host"));
        let mut topo = Topology {
            prefix: prefix.to_string(),
            host: host.clone(),
            created: Vec::new(),
            endpoints: Vec::new(),
        };
        topo.create_ns(&host)?;
        host.sysctl(HOST_SYSCTLS).context("enabling forwarding in the host namespace")?;
        Ok(topo)
    }

    /// [`Topology::new`] with a fresh [`unique_prefix`].
    pub fn new_unique() -> Result<Self> {
        Self::new(&unique_prefix())
    }

    /// The prefix of every name in this topology.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hypervisor-host namespace, where the taps live and the data plane runs.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// All endpoints, in the order they were added.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// Every namespace of this topology (host first).
    pub fn namespaces(&self) -> &[Netns] {
        &self.created
    }

    /// Adds a VM instance `name` (lowercase letters, digits, `_`, `-`): namespace
    /// `{prefix}-{name}` with `eth0` veth-paired to tap `{prefix}i{n}` in the host.
    pub fn add_instance(&mut self, name: &str) -> Result<Endpoint> {
        self.add_endpoint(EndpointKind::Instance, name)
    }

    /// Adds a remote client `name`: like an instance, on the 10.90.n.0/24 and
    /// fd00:90:n::/64 subnets, tap `{prefix}r{n}`.
    pub fn add_remote(&mut self, name: &str) -> Result<Endpoint> {
        self.add_endpoint(EndpointKind::Remote, name)
    }

    /// Deletes every namespace now, reporting failures (drop does the same but can
    /// only print them).
    pub fn destroy(mut self) -> Result<()> {
        self.teardown()
    }

    /// Creates a namespace, records it for teardown, and prepares it: owner marker,
    /// loopback up, common sysctls.
    fn create_ns(&mut self, ns: &Netns) -> Result<()> {
        ensure!(!ns.exists(), "namespace {ns} already exists (in use by another test?)");
        ip_netns(&["add", ns.name()])?;
        self.created.push(ns.clone());
        ns.ip(&["link", "set", "dev", "lo", "up", "alias", &owner_tag()])?;
        ns.sysctl(COMMON_SYSCTLS)?;
        Ok(())
    }

    fn add_endpoint(&mut self, kind: EndpointKind, name: &str) -> Result<Endpoint> {
        ensure!(
            !name.is_empty()
                && name != "host"
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'),
            "endpoint name {name:?} must be [a-z0-9_-]+ and not \"host\""
        );
        ensure!(self.endpoint(name).is_none(), "endpoint {name:?} already exists");
        let count = self.endpoints.iter().filter(|e| e.kind == kind).count();
        let index = u8::try_from(count + 1)
            .ok()
            .filter(|&i| i < 255)
            .ok_or_else(|| anyhow!("too many {kind:?} endpoints"))?;
        let net = kind.subnet();
        let tap = format!("{}{}{index}", self.prefix, kind.letter());
        if tap.len() > 15 {
            bail!("interface name {tap:?} exceeds 15 characters");
        }
        let v6_net = u16::from_str_radix(&net.to_string(), 16).expect("decimal digits are hex digits");
        let ep = Endpoint {
            kind,
            name: name.to_string(),
            index,
            ns: Netns::named(format!("{}-{name}", self.prefix)),
            host: self.host.clone(),
            tap,
            // Locally administered, readable: 02:00:<subnet>:00:<n>:<host part>.
            mac: format!("02:00:{net}:00:{index:02x}:02"),
            tap_mac: format!("02:00:{net}:00:{index:02x}:01"),
            ipv4: Ipv4Addr::new(10, net, index, 2),
            ipv6: Ipv6Addr::new(0xfd00, v6_net, u16::from(index), 0, 0, 0, 0, 2),
        };
        self.create_ns(&ep.ns).with_context(|| format!("creating namespace for {name}"))?;
        ep.ns.sysctl(ENDPOINT_SYSCTLS)?;
        self.wire(&ep).with_context(|| format!("wiring {kind:?} {name} ({}) to the host", ep.tap))?;
        self.endpoints.push(ep.clone());
        Ok(ep)
    }

    /// Creates the veth pair and configures addresses and routes on both sides.
    fn wire(&self, ep: &Endpoint) -> Result<()> {
        let (host, ns, tap) = (&self.host, &ep.ns, ep.tap.as_str());
        // Both ends are created directly in their namespaces: "eth0" never exists,
        // even for an instant, outside the instance namespace.
        #[rustfmt::skip]
        host.ip(&["link", "add", tap, "address", &ep.tap_mac, "type", "veth",
                  "peer", "name", "eth0", "address", &ep.mac, "netns", ns.name()])?;
        // Links up before addresses and routes: the connected routes the default
        // routes depend on only exist on an up link.
        host.ip(&["link", "set", "dev", tap, "up"])?;
        ns.ip(&["link", "set", "dev", "eth0", "up"])?;
        let (gw4, gw6) = (ep.gateway_v4().to_string(), ep.gateway_v6().to_string());
        host.ip(&["addr", "add", &format!("{gw4}/24"), "dev", tap])?;
        host.ip(&["addr", "add", &format!("{gw6}/64"), "dev", tap, "nodad"])?;
        ns.ip(&["addr", "add", &format!("{}/24", ep.ipv4), "dev", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{}/64", ep.ipv6), "dev", "eth0", "nodad"])?;
        ns.ip(&["route", "add", "default", "via", &gw4, "dev", "eth0"])?;
        ns.ip(&["-6", "route", "add", "default", "via", &gw6, "dev", "eth0"])?;
        Ok(())
    }

    /// Deletes all namespaces (newest first), attempting every one even if some fail.
    fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        while let Some(ns) = self.created.pop() {
            if ns.exists()
                && let Err(e) = ip_netns(&["del", ns.name()])
            {
                errors.push(format!("{e:#}"));
            }
        }
        self.endpoints.clear();
        if !errors.is_empty() {
            bail!("tearing down topology {}: {}", self.prefix, errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("sg-tests: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_short() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(a.starts_with(NS_PREFIX) && a.len() <= MAX_PREFIX_LEN, "{a}");
        assert!(format!("{a}i254").len() <= 15);
    }

    #[test]
    fn base36() {
        assert_eq!(to_base36(0, 1), "0");
        assert_eq!(to_base36(35, 1), "z");
        assert_eq!(to_base36(36, 5), "00010");
        assert_eq!(to_base36(4_194_304, 5), "2hwcg");
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("203.0.113.7/32").unwrap(), ("203.0.113.7".parse().unwrap(), 32));
        assert_eq!(parse_cidr("2001:db8::7").unwrap(), ("2001:db8::7".parse().unwrap(), 128));
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(parse_cidr("nonsense/8").is_err());
        assert_eq!(network("198.51.100.77".parse().unwrap(), 24), "198.51.100.0".parse::<IpAddr>().unwrap());
        assert_eq!(
            network("2001:db8:1:2::9".parse().unwrap(), 48),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(network("1.2.3.4".parse().unwrap(), 0), "0.0.0.0".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id()).is_some());
        assert!(owner_tag().starts_with(OWNER_TAG));
    }

    #[test]
    fn cleanup_refuses_foreign_prefixes() {
        assert!(cleanup_stale("").is_err());
        assert!(cleanup_stale("foo").is_err());
    }
}
