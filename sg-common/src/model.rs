//! The security-group rule model: what operators write and what the data plane enforces.

use core::fmt;
use core::str::FromStr;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::abi;

/// Direction of traffic relative to the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the instance; the remote address is the packet's source.
    Ingress,
    /// Traffic from the instance; the remote address is the packet's destination.
    Egress,
}

impl Direction {
    pub const fn code(self) -> u8 {
        match self {
            Direction::Ingress => abi::DIR_INGRESS,
            Direction::Egress => abi::DIR_EGRESS,
        }
    }
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// IP version of a rule ("ethertype" in OpenStack terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EtherType {
    IPv4,
    IPv6,
}

impl EtherType {
    pub const fn family(self) -> u8 {
        match self {
            EtherType::IPv4 => abi::FAMILY_V4,
            EtherType::IPv6 => abi::FAMILY_V6,
        }
    }
    pub const fn of_addr(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => EtherType::IPv4,
            IpAddr::V6(_) => EtherType::IPv6,
        }
    }
    /// The address that covers everything: `0.0.0.0/0` or `::/0`.
    pub fn any_cidr(self) -> IpNet {
        match self {
            EtherType::IPv4 => "0.0.0.0/0".parse().expect("valid"),
            EtherType::IPv6 => "::/0".parse().expect("valid"),
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            EtherType::IPv4 => "IPv4",
            EtherType::IPv6 => "IPv6",
        })
    }
}

/// IP protocol a rule matches. Numbers of named protocols are normalised to the name
/// (`6` is `Tcp`), so two spellings of one rule compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Number(u8),
}

impl Protocol {
    pub const fn from_number(n: u8) -> Self {
        match n {
            abi::IPPROTO_TCP => Protocol::Tcp,
            abi::IPPROTO_UDP => Protocol::Udp,
            abi::IPPROTO_ICMP => Protocol::Icmp,
            abi::IPPROTO_ICMPV6 => Protocol::Icmpv6,
            n => Protocol::Number(n),
        }
    }
    /// The IP protocol number, `None` for `Any`.
    pub const fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Tcp => Some(abi::IPPROTO_TCP),
            Protocol::Udp => Some(abi::IPPROTO_UDP),
            Protocol::Icmp => Some(abi::IPPROTO_ICMP),
            Protocol::Icmpv6 => Some(abi::IPPROTO_ICMPV6),
            Protocol::Number(n) => Some(n),
        }
    }
    /// Whether rules of this protocol may name destination ports.
    pub const fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
    /// Whether rules of this protocol may name an ICMP type and code.
    pub const fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Any => f.write_str("any"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "any" | "all" => Ok(Protocol::Any),
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            "icmpv6" | "ipv6-icmp" => Ok(Protocol::Icmpv6),
            other => other.parse::<u8>().map(Protocol::from_number).map_err(|_| {
                format!("unknown protocol `{s}`: expected tcp, udp, icmp, icmpv6, any or a number 0-255")
            }),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) => s.serialize_u8(*n),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => u8::try_from(n)
                .map(Protocol::from_number)
                .map_err(|_| serde::de::Error::custom(format!("protocol number {n} is out of range 0-255"))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// An inclusive destination-port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { min: 0, max: u16::MAX };
    pub const fn single(port: u16) -> Self {
        PortRange { min: port, max: port }
    }
    pub const fn contains(self, port: u16) -> bool {
        self.min <= port && port <= self.max
    }
    /// Opens every port (0 or 1 up to 65535).
    pub const fn is_whole_range(self) -> bool {
        self.min <= 1 && self.max == u16::MAX
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max { write!(f, "{}", self.min) } else { write!(f, "{}-{}", self.min, self.max) }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |p: &str| {
            p.trim().parse::<u16>().map_err(|_| format!("invalid port `{p}`: expected a number 1-65535"))
        };
        match s.split_once(['-', ':']) {
            Some((a, b)) => Ok(PortRange { min: parse(a)?, max: parse(b)? }),
            None => parse(s).map(PortRange::single),
        }
    }
}

/// One security-group rule. Rules only ever allow; anything no rule allows is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub direction: Direction,
    pub ethertype: EtherType,
    pub protocol: Protocol,
    /// Destination ports, for tcp and udp only; `None` means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// ICMP type, for icmp/icmpv6 only; `None` means every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP code, only together with `icmp_type`; `None` means every code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// Remote network: source for ingress, destination for egress.
    pub cidr: IpNet,
}

impl Rule {
    /// A rule with the given fields and neither ports nor ICMP type.
    pub fn new(direction: Direction, ethertype: EtherType, protocol: Protocol, cidr: IpNet) -> Self {
        Rule { direction, ethertype, protocol, ports: None, icmp_type: None, icmp_code: None, cidr }
    }
    pub fn with_ports(mut self, ports: PortRange) -> Self {
        self.ports = Some(ports);
        self
    }

    /// The protocol number the data plane keys on; `icmp` in an IPv6 rule means ICMPv6.
    pub fn effective_protocol(&self) -> Protocol {
        match (self.protocol, self.ethertype) {
            (Protocol::Icmp, EtherType::IPv6) => Protocol::Icmpv6,
            (p, _) => p,
        }
    }

    /// The range of the 16-bit "port key" this rule covers: the destination port for
    /// tcp/udp, `type << 8 | code` for icmp/icmpv6, everything otherwise.
    pub fn port_key_range(&self) -> PortRange {
        let proto = self.effective_protocol();
        if proto.has_ports() {
            self.ports.unwrap_or(PortRange::ALL)
        } else if proto.is_icmp() {
            match (self.icmp_type, self.icmp_code) {
                (Some(t), Some(c)) => PortRange::single(u16::from(t) << 8 | u16::from(c)),
                (Some(t), None) => PortRange { min: u16::from(t) << 8, max: u16::from(t) << 8 | 0xff },
                _ => PortRange::ALL,
            }
        } else {
            PortRange::ALL
        }
    }

    /// Whether this rule opens every port to everyone's ingress: worth a loud warning.
    pub fn opens_all_ports(&self) -> bool {
        self.direction == Direction::Ingress
            && self.effective_protocol().has_ports()
            && self.ports.is_none_or(|p| p.is_whole_range())
    }

    /// Checks the rule on its own; the error names the offending field.
    pub fn validate(&self) -> Result<(), RuleError> {
        let family_ok = matches!(
            (self.ethertype, self.cidr),
            (EtherType::IPv4, IpNet::V4(_)) | (EtherType::IPv6, IpNet::V6(_))
        );
        if !family_ok {
            return Err(RuleError::FamilyMismatch { cidr: self.cidr, ethertype: self.ethertype });
        }
        if self.cidr.prefix_len() == 0 && !self.cidr.addr().is_unspecified() {
            return Err(RuleError::InsecureZeroPrefix { cidr: self.cidr });
        }
        if self.cidr.addr() != self.cidr.network() {
            return Err(RuleError::HostBitsSet { cidr: self.cidr, network: self.cidr.trunc() });
        }
        if self.protocol == Protocol::Icmpv6 && self.ethertype == EtherType::IPv4 {
            return Err(RuleError::Icmpv6OnIpv4);
        }
        let proto = self.effective_protocol();
        if let Some(ports) = self.ports {
            if !proto.has_ports() {
                return Err(RuleError::PortsWithoutPortProtocol { protocol: self.protocol });
            }
            if ports.min == 0 || ports.max == 0 {
                return Err(RuleError::PortZero);
            }
            if ports.min > ports.max {
                return Err(RuleError::PortRangeReversed { ports });
            }
        }
        if (self.icmp_type.is_some() || self.icmp_code.is_some()) && !proto.is_icmp() {
            return Err(RuleError::IcmpFieldsWithoutIcmp { protocol: self.protocol });
        }
        if self.icmp_code.is_some() && self.icmp_type.is_none() {
            return Err(RuleError::IcmpCodeWithoutType);
        }
        Ok(())
    }

    /// Whether the rule matches a classified packet (see [`crate::reference`]).
    pub fn matches(&self, direction: Direction, protocol: u8, port_key: u16, remote: IpAddr) -> bool {
        self.direction == direction
            && self.ethertype == EtherType::of_addr(&remote)
            && self.effective_protocol().number().is_none_or(|p| p == protocol)
            && self.port_key_range().contains(port_key)
            && self.cidr.contains(&remote)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.direction, self.ethertype, self.protocol)?;
        if let Some(p) = self.ports {
            write!(f, " port {p}")?;
        }
        if let Some(t) = self.icmp_type {
            write!(f, " type {t}")?;
        }
        if let Some(c) = self.icmp_code {
            write!(f, " code {c}")?;
        }
        write!(f, " {} {}", if self.direction == Direction::Ingress { "from" } else { "to" }, self.cidr)
    }
}

/// A rule that cannot be enforced as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("cidr {cidr} is not an {ethertype} network")]
    FamilyMismatch { cidr: IpNet, ethertype: EtherType },
    #[error(
        "cidr {cidr} is refused as insecure: a /0 prefix matches every address whatever is \
         written before it; write 0.0.0.0/0 or ::/0 if everything is meant"
    )]
    InsecureZeroPrefix { cidr: IpNet },
    #[error("cidr {cidr} has host bits set; did you mean {network}?")]
    HostBitsSet { cidr: IpNet, network: IpNet },
    #[error("protocol icmpv6 needs ethertype IPv6")]
    Icmpv6OnIpv4,
    #[error("protocol {protocol} has no ports; ports are only for tcp and udp")]
    PortsWithoutPortProtocol { protocol: Protocol },
    #[error("port 0 is not a valid port; ports are 1-65535")]
    PortZero,
    #[error("port range {ports} is reversed: minimum above maximum")]
    PortRangeReversed { ports: PortRange },
    #[error("icmp type/code given for protocol {protocol}; they are only for icmp and icmpv6")]
    IcmpFieldsWithoutIcmp { protocol: Protocol },
    #[error("icmp code given without icmp type")]
    IcmpCodeWithoutType,
}

/// Operating system of an instance; picks its default rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Linux,
    Windows,
}

impl Os {
    pub const fn as_str(self) -> &'static str {
        match self {
            Os::Linux => "linux",
            Os::Windows => "windows",
        }
    }
}

impl fmt::Display for Os {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Os {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "linux" => Ok(Os::Linux),
            "windows" => Ok(Os::Windows),
            _ => Err(format!("unknown os `{s}`: expected linux or windows")),
        }
    }
}

/// The remote-desktop port opened on Windows instances (and geo-blocked).
pub const REMOTE_DESKTOP_PORT: u16 = 9833;

/// The rules a new instance gets.
pub fn default_rules(os: Os) -> Vec<Rule> {
    let v4 = EtherType::IPv4.any_cidr();
    let v6 = EtherType::IPv6.any_cidr();
    let tcp_in = |port| {
        Rule::new(Direction::Ingress, EtherType::IPv4, Protocol::Tcp, v4).with_ports(PortRange::single(port))
    };
    let mut rules = vec![
        tcp_in(443),
        tcp_in(22),
        Rule::new(Direction::Ingress, EtherType::IPv4, Protocol::Icmp, v4),
        Rule::new(Direction::Egress, EtherType::IPv4, Protocol::Any, v4),
        Rule::new(Direction::Egress, EtherType::IPv6, Protocol::Any, v6),
    ];
    if os == Os::Windows {
        rules.push(tcp_in(REMOTE_DESKTOP_PORT));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        // direction ethertype proto [ports] cidr
        let f: Vec<&str> = s.split_whitespace().collect();
        let dir = if f[0] == "in" { Direction::Ingress } else { Direction::Egress };
        let et = if f[1] == "4" { EtherType::IPv4 } else { EtherType::IPv6 };
        let mut r = Rule::new(dir, et, f[2].parse().unwrap(), f[f.len() - 1].parse().unwrap());
        if f.len() == 5 {
            r.ports = Some(f[3].parse().unwrap());
        }
        r
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(rule("in 4 tcp 22 0.0.0.0/0").validate(), Ok(()));
        assert!(matches!(
            rule("in 4 tcp 22 10.1.2.3/0").validate(),
            Err(RuleError::InsecureZeroPrefix { .. })
        ));
        assert!(matches!(rule("in 6 tcp 22 ::1/0").validate(), Err(RuleError::InsecureZeroPrefix { .. })));
        let err = rule("in 4 tcp 22 10.1.2.3/24").validate().unwrap_err();
        assert_eq!(err.to_string(), "cidr 10.1.2.3/24 has host bits set; did you mean 10.1.2.0/24?");
        assert!(matches!(rule("in 6 tcp 22 10.0.0.0/8").validate(), Err(RuleError::FamilyMismatch { .. })));
        assert!(matches!(
            rule("in 4 icmp 22 0.0.0.0/0").validate(),
            Err(RuleError::PortsWithoutPortProtocol { .. })
        ));
        assert!(matches!(
            rule("in 4 tcp 30-20 0.0.0.0/0").validate(),
            Err(RuleError::PortRangeReversed { .. })
        ));
        assert!(matches!(rule("in 4 tcp 0-20 0.0.0.0/0").validate(), Err(RuleError::PortZero)));
        assert!(matches!(rule("in 4 icmpv6 ::/0").validate(), Err(RuleError::FamilyMismatch { .. })));
    }

    #[test]
    fn protocol_spellings_normalise() {
        assert_eq!("6".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert_eq!("TCP".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert_eq!("47".parse::<Protocol>(), Ok(Protocol::Number(47)));
        assert!("256".parse::<Protocol>().is_err());
        assert!("gre".parse::<Protocol>().unwrap_err().contains("unknown protocol `gre`"));
    }

    #[test]
    fn whole_range_warning() {
        assert!(rule("in 4 tcp 1-65535 0.0.0.0/0").opens_all_ports());
        assert!(rule("in 4 udp 0.0.0.0/0").opens_all_ports());
        assert!(!rule("in 4 tcp 2-65535 0.0.0.0/0").opens_all_ports());
        assert!(!rule("out 4 tcp 1-65535 0.0.0.0/0").opens_all_ports());
    }

    #[test]
    fn defaults_match_the_seed_table() {
        let linux = default_rules(Os::Linux);
        assert_eq!(linux.len(), 5);
        let windows = default_rules(Os::Windows);
        assert_eq!(windows.len(), 6);
        assert!(windows.iter().any(|r| r.ports == Some(PortRange::single(9833))));
        assert!(linux.iter().chain(&windows).all(|r| r.validate().is_ok()));
    }

    #[test]
    fn icmp_port_key() {
        let mut r = rule("in 4 icmp 0.0.0.0/0");
        assert_eq!(r.port_key_range(), PortRange::ALL);
        r.icmp_type = Some(8);
        assert_eq!(r.port_key_range(), PortRange { min: 0x800, max: 0x8ff });
        r.icmp_code = Some(0);
        assert_eq!(r.port_key_range(), PortRange::single(0x800));
    }
}
