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

/// `LpmKey<GeoKey> -> GeoValue`: networks of the geo-blocked countries.
pub const MAP_GEO_BLOCK: &str = "GEO_BLOCK";
/// Array `0 -> GeoConfig`.
pub const MAP_GEO_CONFIG: &str = "GEO_CONFIG";
/// Per-CPU array `IfacePolicy::stats_slot -> IfaceCounters`: packets per reason of each
/// instance (host totals are their sum).
pub const MAP_IFACE_STATS: &str = "IFACE_STATS";

/// `IfacePolicy::flags`: ingress to the geo-blocked ports is checked against `GEO_BLOCK`.
pub const IFACE_FLAG_GEO_BLOCK: u32 = 1;
/// `IfacePolicy::flags`: audit mode, verdicts are counted but nothing is dropped.
pub const IFACE_FLAG_AUDIT: u32 = 2;

/// Class id reserved in `CIDR_ALLOW` for an instance's geo-block exemptions: they are
/// part of its policy, so they switch atomically with its rules.
pub const GEO_EXEMPT_CLASS: u32 = u32::MAX;

/// Key data of [`MAP_GEO_BLOCK`]: a prefix set id (switching sets is atomic), then the
/// address (IPv4 in the first four bytes; the family is part of the key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GeoKey {
    pub set_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Value of [`MAP_GEO_BLOCK`]: the country, two ASCII letters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeoValue {
    pub country: [u8; 2],
    pub _pad: [u8; 2],
}

/// Bits of `GeoKey` before the address.
pub const GEO_KEY_FIXED_BITS: u32 = 64;
/// Port ranges a geo block can name.
pub const GEO_MAX_PORT_RANGES: usize = 4;

/// Value of [`MAP_GEO_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeoConfig {
    /// Prefix set in force; 0 = geo-blocking off.
    pub set_id: u32,
    pub protocol: u8,
    pub n_ranges: u8,
    pub _pad: u16,
    /// Inclusive destination-port ranges `[min, max]`.
    pub ranges: [[u16; 2]; GEO_MAX_PORT_RANGES],
}

/// Value of [`MAP_IFACE_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Packets per `Reason`.
    pub packets: [u64; 16],
}

/// Ring buffer of [`DropEvent`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU array `0 -> EventBudget`: rate limit of drop events.
pub const MAP_EVENT_BUDGET: &str = "EVENT_BUDGET";
/// Drop events each CPU may emit per second; the rest are counted as suppressed, so a
/// flood cannot starve the agent.
pub const EVENTS_PER_CPU_PER_SEC: u64 = 1000;

/// A dropped packet, as the kernel reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub timestamp_ns: u64,
    pub ifindex: u32,
    /// `Reason` code.
    pub reason: u32,
    pub direction: u8,
    pub family: u8,
    pub protocol: u8,
    pub _pad: u8,
    pub src_port: u16,
    /// Destination port, or ICMP `type << 8 | code`.
    pub dst_port: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Events suppressed on this CPU by the rate limit since the last one emitted.
    pub suppressed: u64,
}

/// Value of [`MAP_EVENT_BUDGET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub emitted: u64,
    pub suppressed: u64,
}

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
    /// Index of the interface's counters in `IFACE_STATS` (a per-CPU array: its
    /// lookups are inlined by the verifier, no helper call per packet).
    pub stats_slot: u32,
    pub _pad: u32,
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
    /// The first rule of the class with this CIDR: its 32-bit handle (the first four
    /// bytes of its UUID; the rule's index where rules have no UUIDs), the key of its
    /// counters in `RULE_STATS`.
    pub rule_id: u32,
}

/// Per-CPU hash `RuleStatsKey -> RuleCounters`: packets and bytes each rule allowed.
pub const MAP_RULE_STATS: &str = "RULE_STATS";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleStatsKey {
    pub ifindex: u32,
    pub rule_id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
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
    /// A non-first IP fragment whose first fragment was not allowed (or not seen).
    DropFragment = 4,
    /// An ethertype that is neither IPv4, IPv6 nor ARP.
    DropEtherType = 5,
    /// An IPv6 extension-header chain longer than the parser follows.
    DropExtHeaders = 6,
    /// Allowed as part of a tracked connection (a reply, or later packets of a flow a
    /// rule allowed).
    AllowTracked = 7,
    /// An ICMP error (unreachable, packet too big, time exceeded, parameter problem)
    /// about a tracked connection, allowed to its endpoint.
    AllowRelated = 8,
    /// A tracked flow whose allowing rule is gone: the flow is cut at this packet.
    DropRevoked = 9,
    /// From a geo-blocked country to a geo-blocked port (whatever the rules say).
    DropGeo = 10,
    /// A non-first fragment of a packet whose first fragment was allowed.
    AllowFragment = 11,
    /// An ICMPv6 router advertisement or redirect sent by an instance: instances are
    /// hosts, not routers (RA guard, RFC 6105), whatever the rules say.
    DropRaGuard = 12,
}

impl Reason {
    pub const fn from_code(code: u32) -> Option<Reason> {
        if code < Self::COUNT { Some(Self::ALL[code as usize]) } else { None }
    }

    pub const COUNT: u32 = 13;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::AllowRule,
        Reason::AllowInfra,
        Reason::DropNoRule,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropEtherType,
        Reason::DropExtHeaders,
        Reason::AllowTracked,
        Reason::AllowRelated,
        Reason::DropRevoked,
        Reason::DropGeo,
        Reason::AllowFragment,
        Reason::DropRaGuard,
    ];

    pub const fn is_allow(self) -> bool {
        matches!(
            self,
            Reason::AllowRule
                | Reason::AllowInfra
                | Reason::AllowTracked
                | Reason::AllowRelated
                | Reason::AllowFragment
        )
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
            Reason::AllowTracked => "allow-tracked",
            Reason::AllowRelated => "allow-related",
            Reason::DropRevoked => "revoked",
            Reason::DropGeo => "geo-block",
            Reason::AllowFragment => "allow-fragment",
            Reason::DropRaGuard => "ra-guard",
        }
    }
}

// ---------------------------------------------------------------------------------
// Connection tracking.
//
// Flows are keyed from the instance's point of view (instance address/port, remote
// address/port), so both directions of a flow find the same key without reversing.
// Two LRU maps: `CT_NEW` holds flows that have not been confirmed (TCP before the
// handshake completes, UDP/ICMP/other before a reply); `CT` holds confirmed flows.
// A flood of new flows (spoofed SYNs, say) only churns `CT_NEW` and cannot evict the
// established flows in `CT`.

/// `CtKey -> CtEntry`: confirmed flows (LRU).
pub const MAP_CT: &str = "CT";
/// `CtKey -> CtEntry`: unconfirmed flows (LRU).
pub const MAP_CT_NEW: &str = "CT_NEW";
/// Array `0 -> CtTimeouts`.
pub const MAP_CT_CONFIG: &str = "CT_CONFIG";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub ifindex: u32,
    pub family: u8,
    pub protocol: u8,
    /// Instance-side port (tcp/udp), ICMP echo identifier, else 0.
    pub port_inst: u16,
    /// Remote port (tcp/udp), ICMP echo identifier, else 0.
    pub port_remote: u16,
    pub _pad: u16,
    pub addr_inst: [u8; 16],
    pub addr_remote: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// bpf_ktime_get_ns() of the last packet.
    pub last_seen_ns: u64,
    pub created_ns: u64,
    /// Policy the flow was last checked against; when the interface's policy differs,
    /// the opening packet is re-classified before anything rides the entry.
    pub policy_id: u32,
    /// Port key (`dport`, or ICMP `type << 8 | code`) of the opening packet.
    pub orig_port_key: u16,
    /// Direction (`DIR_*`) of the packet that opened the flow.
    pub origin: u8,
    /// `CT_*` state.
    pub state: u8,
}

pub const CT_TCP_SYN_SENT: u8 = 1;
pub const CT_TCP_SYN_RECV: u8 = 2;
pub const CT_TCP_ESTABLISHED: u8 = 3;
/// A FIN was seen.
pub const CT_TCP_CLOSING: u8 = 4;
/// An RST was seen.
pub const CT_TCP_CLOSED: u8 = 5;
/// Non-TCP flow, no reply yet.
pub const CT_UNREPLIED: u8 = 6;
/// Non-TCP flow that saw a reply.
pub const CT_REPLIED: u8 = 7;

/// Idle timeouts in seconds (value of `CT_CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
    pub other: u32,
    pub _pad: u32,
}

impl CtTimeouts {
    /// Defaults: AWS's 5 days for established TCP (a security group must not cut idle
    /// SSH sessions), Cilium's 60 s / 10 s for handshakes and closing, AWS's 30 s /
    /// 180 s for UDP one-shot / stream, 30 s ICMP, 60 s other protocols.
    pub const DEFAULT: CtTimeouts = CtTimeouts {
        tcp_syn: 60,
        tcp_established: 432_000,
        tcp_closing: 10,
        udp: 30,
        udp_stream: 180,
        icmp: 30,
        other: 60,
        _pad: 0,
    };

    /// Idle timeout of an entry in `state` for `protocol`, in seconds.
    pub const fn for_state(&self, protocol: u8, state: u8) -> u32 {
        match state {
            CT_TCP_SYN_SENT | CT_TCP_SYN_RECV => self.tcp_syn,
            CT_TCP_ESTABLISHED => self.tcp_established,
            CT_TCP_CLOSING | CT_TCP_CLOSED => self.tcp_closing,
            _ => match protocol {
                IPPROTO_UDP => {
                    if state == CT_REPLIED {
                        self.udp_stream
                    } else {
                        self.udp
                    }
                }
                IPPROTO_ICMP | IPPROTO_ICMPV6 => self.icmp,
                _ => self.other,
            },
        }
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// ICMPv6 router advertisement and redirect: judged by direction (RA guard).
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_REDIRECT: u8 = 137;

/// The RA-guard verdict of an ICMPv6 packet of type `icmp_type` travelling in
/// `direction`: router advertisements reach instances (they need them for SLAAC) but
/// never leave them, nor do redirects. `None`: not concerned.
pub const fn router_advert_verdict(direction: u8, icmp_type: u8) -> Option<Reason> {
    match (icmp_type, direction) {
        (ICMPV6_ROUTER_ADVERT, DIR_INGRESS) => Some(Reason::AllowInfra),
        (ICMPV6_ROUTER_ADVERT, _) => Some(Reason::DropRaGuard),
        (ICMPV6_REDIRECT, DIR_EGRESS) => Some(Reason::DropRaGuard),
        _ => None,
    }
}

/// ICMP echo request/reply types.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// ICMP error types that quote the offending packet (IPv4: unreachable, time exceeded,
/// parameter problem; IPv6: unreachable, packet too big, time exceeded, parameter
/// problem).
pub const fn is_icmp_error(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        IPPROTO_ICMP => matches!(icmp_type, 3 | 11 | 12),
        IPPROTO_ICMPV6 => matches!(icmp_type, 1..=4),
        _ => false,
    }
}

/// `FragKey -> FragEntry`: first fragments that were allowed; the rest of the packet
/// (non-first fragments carry no ports) follows their verdict (LRU).
pub const MAP_FRAGS: &str = "FRAGS";
/// How long after an allowed first fragment its other fragments are accepted.
pub const FRAG_TIMEOUT_NS: u64 = 5_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    pub ifindex: u32,
    pub family: u8,
    pub protocol: u8,
    pub _pad: u16,
    /// IPv4 identification or IPv6 fragment identification.
    pub id: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    pub allowed_ns: u64,
}

/// `Meta::frag` / reference `Fragment` codes.
pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_REST: u8 = 2;

/// Maximum number of IPv6 extension headers the parser walks before dropping.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Maximum number of VLAN tags (802.1Q / 802.1ad) the parser strips.
pub const MAX_VLAN_TAGS: usize = 2;

// Layout checks: the kernel reads these bytes as they are; no implicit padding.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<IfacePolicy>() == 16);
    assert!(size_of::<PortClassKey>() == 12);
    assert!(size_of::<PortClass>() == 4);
    assert!(size_of::<CidrKey>() == 24);
    assert!(align_of::<CidrKey>() == 4);
    assert!(size_of::<CidrMatch>() == 4);
    assert!(size_of::<CtKey>() == 44);
    assert!(size_of::<CtEntry>() == 24);
    assert!(size_of::<CtTimeouts>() == 32);
    assert!(size_of::<GeoKey>() == 24);
    assert!(size_of::<GeoValue>() == 4);
    assert!(size_of::<GeoConfig>() == 24);
    assert!(size_of::<IfaceCounters>() == 128);
    assert!((Reason::COUNT as usize) <= 16);
    assert!(size_of::<DropEvent>() == 64);
    assert!(size_of::<FragKey>() == 44);
    assert!(size_of::<FragEntry>() == 8);
    assert!(size_of::<RuleStatsKey>() == 8);
    assert!(size_of::<RuleCounters>() == 16);
    assert!(size_of::<EventBudget>() == 24);
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
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for CtTimeouts {}
    unsafe impl aya::Pod for GeoKey {}
    unsafe impl aya::Pod for GeoValue {}
    unsafe impl aya::Pod for GeoConfig {}
    unsafe impl aya::Pod for IfaceCounters {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for RuleStatsKey {}
    unsafe impl aya::Pod for RuleCounters {}
    unsafe impl aya::Pod for EventBudget {}
}
