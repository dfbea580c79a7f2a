//! Rule sets and frames shared by the benchmarks.
//!
//! Rule `i` (of any set) is one port and one network of its own:
//! destination port `1000 + i`, remote `10.(i/256).(i%256).0/24` or `2001:db8:0:i::/64`.
//! A set of N rules is rules `0..N`, so the N = 1,000 set is a prefix of the 5,000 one.
//! Order does not matter to sg (hash lookups), but it does to a linear ruleset: rule 0
//! is evaluated first there, rule N-1 last.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sg_common::model::{Direction, EtherType, PortRange, Protocol, Rule};

/// Address family of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];
    pub fn ethertype(self) -> EtherType {
        match self {
            Family::V4 => EtherType::IPv4,
            Family::V6 => EtherType::IPv6,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// The instance's own address (source of what it sends, destination of what it gets).
pub fn instance_addr(family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(192, 168, 100, 1).into(),
        Family::V6 => "fd00::1".parse::<Ipv6Addr>().expect("valid").into(),
    }
}

pub const FIRST_PORT: u16 = 1000;

/// The network of rule `i`.
pub fn rule_net(family: Family, i: usize) -> IpNet {
    assert!(i < 65_536, "rule index {i} out of the benchmark's address plan");
    match family {
        Family::V4 => Ipv4Net::new(Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 0), 24).expect("valid").into(),
        Family::V6 => {
            Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, 0, i as u16, 0, 0, 0, 0), 64).expect("valid").into()
        }
    }
}

/// Host number `k` inside rule `i`'s network (never the network or broadcast address).
pub fn host_in_rule(family: Family, i: usize, k: usize) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 1 + (k % 254) as u8).into(),
        Family::V6 => {
            Ipv6Addr::new(0x2001, 0xdb8, 0, i as u16, 0, 0, (k >> 16) as u16, (k as u16).wrapping_add(1))
                .into()
        }
    }
}

/// Address number `k` outside every rule's network.
pub fn host_outside(family: Family, k: usize) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(172, 16, (k >> 8) as u8, k as u8).into(),
        Family::V6 => {
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, (k >> 16) as u16, (k as u16).wrapping_add(1)).into()
        }
    }
}

pub fn rule_port(i: usize) -> u16 {
    FIRST_PORT + i as u16
}

/// How a benchmark rule set spreads its rules: the two common shapes of real groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Rule i: port `1000 + i`, its own network (many ports, one network each).
    #[default]
    Ports,
    /// Rule i: port 1000, its own network (an allow-list of networks on one port).
    Cidrs,
}

impl Shape {
    /// Destination port of rule `i`.
    pub fn port(self, i: usize) -> u16 {
        match self {
            Shape::Ports => rule_port(i),
            Shape::Cidrs => FIRST_PORT,
        }
    }
}

/// Rules `0..n` of one direction and family, tcp only, in `shape`.
pub fn shaped_rules(n: usize, direction: Direction, family: Family, shape: Shape) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            Rule::new(direction, family.ethertype(), Protocol::Tcp, rule_net(family, i))
                .with_ports(PortRange::single(shape.port(i)))
        })
        .collect()
}

/// Protocol of rule `i` in a set with `mix` (tcp and udp alternate) or tcp only.
pub fn rule_protocol(i: usize, mix: bool) -> Protocol {
    if mix && i % 2 == 1 { Protocol::Udp } else { Protocol::Tcp }
}

/// Rules `0..n` of one direction and family.
pub fn rules(n: usize, direction: Direction, family: Family, mix: bool) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            Rule::new(direction, family.ethertype(), rule_protocol(i, mix), rule_net(family, i))
                .with_ports(PortRange::single(rule_port(i)))
        })
        .collect()
}

pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Not the receiver's MAC: frames sg passes stop at the IP layer as "other host", the
/// cheapest and most constant way through the stack.
pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

/// Transport of a benchmark frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Udp,
    /// TCP with these flags (`TCP_*` bits of `sg_common::abi`).
    Tcp(u8),
}

pub const SYN: u8 = sg_common::abi::TCP_SYN;
pub const ACK: u8 = sg_common::abi::TCP_ACK;

impl L4 {
    /// The transport a rule's protocol admits: `tcp_flags` for tcp rules.
    pub fn for_protocol(protocol: Protocol, tcp_flags: u8) -> L4 {
        if protocol == Protocol::Udp { L4::Udp } else { L4::Tcp(tcp_flags) }
    }
}

/// One frame between the instance and `remote`, travelling in `direction` (ingress:
/// remote -> instance). Ports are the header's source and destination ports as given.
/// Padded to the Ethernet minimum of 60 bytes (without FCS).
pub fn frame(direction: Direction, remote: IpAddr, sport: u16, dport: u16, l4: L4) -> Vec<u8> {
    let local = instance_addr(if remote.is_ipv4() { Family::V4 } else { Family::V6 });
    let (src, dst) = match direction {
        Direction::Ingress => (remote, local),
        Direction::Egress => (local, remote),
    };
    let eth = PacketBuilder::ethernet2(MAC_SRC, MAC_DST);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("one family"),
    };
    let mut out = Vec::with_capacity(96);
    match l4 {
        L4::Udp => {
            let b = ip.udp(sport, dport);
            let pad = 60usize.saturating_sub(b.size(0));
            b.write(&mut out, &vec![0u8; pad]).expect("udp frame");
        }
        L4::Tcp(flags) => {
            let mut b = ip.tcp(sport, dport, 1, 65535);
            if flags & SYN != 0 {
                b = b.syn();
            }
            if flags & ACK != 0 {
                b = b.ack(1);
            }
            let pad = 60usize.saturating_sub(b.size(0));
            b.write(&mut out, &vec![0u8; pad]).expect("tcp frame");
        }
    }
    out
}

/// A deterministic spread of rule indices: the k-th of `count` picks rule
/// `(k * 97) mod n` (97 is prime to every N used), so consecutive frames hit
/// different rules.
pub fn spread(k: usize, n: usize) -> usize {
    (k * 97) % n
}
