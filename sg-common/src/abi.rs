//! The kernel/userspace contract: map names, keys, values and verdict codes.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields (always zero), no `bool`
//! and no `Option`, and its size is checked at compile time, so the byte layout the
//! kernel sees is the one userspace writes.
//!
//! # Classification in two lookups
//! A rule set is compiled (by `sg-daemon`) into two LPM tries, so a packet costs the same
//! two lookups whatever the number of rules:
//! 1. [`MAP_PORT_CLASS`]: `{policy, direction, family, protocol, port}` -> port class.
//!    The port space of each protocol is cut into elementary intervals; each interval is
//!    stored as port prefixes and names the class of rules that cover it. An entry whose
//!    prefix stops before the protocol byte is the "any protocol" fallback.
//! 2. [`MAP_CIDR_ALLOW`]: `{policy, class, remote address}` -> matching rule. Holds the
//!    CIDRs of the rules of that class; any match allows (rules only allow).
//!
//! Interfaces are bound to a policy id through [`MAP_IFACE_POLICY`]. A new rule set is
//! written under a fresh policy id and published by one update of that map, so a packet
//! sees the whole old or the whole new rule set.

/// `ifindex (u32) -> IfacePolicy`: which interfaces are managed, and by which policy.
pub const MAP_IFACE_POLICY: &str = "IFACE_POLICY";
/// `LpmKey<PortClassKey> -> PortClass`.
pub const MAP_PORT_CLASS: &str = "PORT_CLASS";
/// `LpmKey<CidrKey> -> CidrMatch`.
pub const MAP_CIDR_ALLOW: &str = "CIDR_ALLOW";
/// Per-CPU array `Reason as u32 -> u64` packet counters.
pub const MAP_VERDICT_STATS: &str = "VERDICT_STATS";

/// Program names as they appear in the object file (and under the pin directory).
pub const PROG_INSTANCE_EGRESS: &str = "sg_instance_egress";
pub const PROG_INSTANCE_INGRESS: &str = "sg_instance_ingress";

/// Direction of a packet relative to the instance.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Address family codes used in keys (the IP version number).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Bits of `PortClassKey` before the protocol byte: policy id, direction, family.
pub const PORT_KEY_FIXED_BITS: u32 = 48;
/// Bits of `PortClassKey` up to the first port bit: fixed part, protocol, padding byte.
pub const PORT_KEY_PORT_OFFSET_BITS: u32 = 64;
/// Bits of `CidrKey` before the address: policy id and class id.
pub const CIDR_KEY_FIXED_BITS: u32 = 64;

/// Value of [`MAP_IFACE_POLICY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfacePolicy {
    /// Policy id the interface's packets are classified under; never 0.
    pub policy_id: u32,
    /// `IFACE_FLAG_*` bits.
    pub flags: u32,
}

/// Key data of [`MAP_PORT_CLASS`]; multi-byte fields in network byte order so that
/// LPM prefixes over the port are port ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortClassKey {
    pub policy_id: u32,
    pub direction: u8,
    pub family: u8,
    pub protocol: u8,
    pub _pad: u8,
    /// Destination port (tcp/udp), `type << 8 | code` (icmp/icmpv6) or 0; big endian.
    pub port_be: u16,
    pub _pad2: u16,
}

/// Value of [`MAP_PORT_CLASS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortClass {
    pub class_id: u32,
}

/// Key data of [`MAP_CIDR_ALLOW`]; IPv4 addresses occupy the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrKey {
    pub policy_id: u32,
    pub class_id: u32,
    pub addr: [u8; 16],
}

/// Value of [`MAP_CIDR_ALLOW`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrMatch {
    /// Index of the first rule (in the instance's rule list) with this CIDR in the class.
    pub rule_index: u32,
}

/// LPM trie key: the kernel's `struct bpf_lpm_trie_key` header followed by the data.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct LpmKey<K: Copy> {
    pub prefix_len: u32,
    pub data: K,
}

/// Why a packet got its verdict. Shared by kernel counters, events and the CLI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Allowed by a rule.
    AllowRule = 0,
    /// Allowed without a rule: ARP, IPv6 neighbour discovery.
    AllowInfra = 1,
    /// No rule of the packet's direction matches.
    DropNoRule = 2,
    /// Truncated or inconsistent headers.
    DropMalformed = 3,
    /// A non-first IP fragment (carries no ports, cannot be classified).
    DropFragment = 4,
    /// An ethertype that is neither IPv4, IPv6 nor ARP.
    DropEtherType = 5,
    /// An IPv6 extension-header chain longer than the parser follows.
    DropExtHeaders = 6,
}

impl Reason {
    pub const COUNT: u32 = 7;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::AllowRule,
        Reason::AllowInfra,
        Reason::DropNoRule,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropEtherType,
        Reason::DropExtHeaders,
    ];

    pub const fn is_allow(self) -> bool {
        matches!(self, Reason::AllowRule | Reason::AllowInfra)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::AllowRule => "allow-rule",
            Reason::AllowInfra => "allow-infra",
            Reason::DropNoRule => "no-rule",
            Reason::DropMalformed => "malformed",
            Reason::DropFragment => "fragment",
            Reason::DropEtherType => "ethertype",
            Reason::DropExtHeaders => "ext-headers",
        }
    }
}

/// Maximum number of IPv6 extension headers the parser walks before dropping.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Maximum number of VLAN tags (802.1Q / 802.1ad) the parser strips.
pub const MAX_VLAN_TAGS: usize = 2;

// Layout checks: the kernel reads these bytes as they are; no implicit padding.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<IfacePolicy>() == 8);
    assert!(size_of::<PortClassKey>() == 12);
    assert!(size_of::<PortClass>() == 4);
    assert!(size_of::<CidrKey>() == 24);
    assert!(align_of::<CidrKey>() == 4);
    assert!(size_of::<CidrMatch>() == 4);
    assert!(size_of::<LpmKey<PortClassKey>>() == 16);
    assert!(size_of::<LpmKey<CidrKey>>() == 28);
    assert!(PORT_KEY_PORT_OFFSET_BITS + 16 <= 8 * size_of::<PortClassKey>() as u32);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C) plain data without implicit padding (checked above).
    unsafe impl aya::Pod for IfacePolicy {}
    unsafe impl aya::Pod for PortClassKey {}
    unsafe impl aya::Pod for PortClass {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for CidrMatch {}
}
