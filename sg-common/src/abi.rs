//! The kernel/userspace contract: map names, keys, values and verdict codes.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields (always zero), no `bool`
//! and no `Option`, and its size is checked at compile time, so the byte layout the
//! kernel sees is the one userspace writes.
//!
//! # Classification in two steps, each one hash lookup in the common case
//! A rule set is compiled (by `sg-daemon`) into port classes and per-class CIDR sets,
//! so a packet's cost does not depend on the number of rules:
//! 1. Port -> class. The port space of each protocol is cut into elementary intervals,
//!    each naming the class of rules that cover it. Short intervals (single ports, the
//!    usual rule) are stored port by port in the hash [`MAP_PORT_CLASS_EXACT`]; longer
//!    ones as port prefixes in the LPM trie [`MAP_PORT_CLASS`], which also holds the
//!    "any protocol" fallback (a prefix that stops before the protocol byte). The
//!    intervals partition the port space, so the hash is asked first and the trie only
//!    on a miss: an exact port is always the longest prefix.
//! 2. Remote address -> matching rule, within the class. Any match allows (rules only
//!    allow); the longest prefix names the rule credited. A class whose CIDRs use at
//!    most [`CIDR_EXACT_MAX_LENS`] prefix lengths (nearly all: a security group uses a
//!    handful) lists them in its [`PortClass`], longest first, and each is one hash
//!    lookup of the masked address in [`MAP_CIDR_ALLOW_EXACT`]; other classes use the
//!    LPM trie [`MAP_CIDR_ALLOW`]. Hash lookups cost the same at 5 or 5,000 rules; a
//!    trie's depth grows with everything stored in it.
//!
//! Interfaces are bound to a policy id through [`MAP_IFACE_POLICY`]. A new rule set is
//! written under a fresh policy id and published by one update of that map, so a packet
//! sees the whole old or the whole new rule set.

/// `ifindex (u32) -> IfacePolicy`: which interfaces are managed, and by which policy
/// (every binding; the kernel reads it for interfaces numbered [`IFACE_INDEX_SLOTS`]
/// and up).
pub const MAP_IFACE_POLICY: &str = "IFACE_POLICY";
/// Memory-mapped array `ifindex -> IfacePolicy::pack()` (0: not managed) for interfaces
/// numbered below [`IFACE_INDEX_SLOTS`]: the kernel's lookup is inlined (no call), and
/// the daemon writes each entry with one atomic 64-bit store, so a packet sees the old
/// or the new binding, never half of each.
pub const MAP_IFACE_POLICY_BY_INDEX: &str = "IFACE_POLICY_BY_INDEX";
/// Entries of [`MAP_IFACE_POLICY_BY_INDEX`] (2 MiB).
pub const IFACE_INDEX_SLOTS: u32 = 1 << 18;
/// `LpmKey<PortClassKey> -> PortClass`.
pub const MAP_PORT_CLASS: &str = "PORT_CLASS";
/// `PortClassKey -> PortClass` (hash): single ports and short port runs.
pub const MAP_PORT_CLASS_EXACT: &str = "PORT_CLASS_EXACT";
/// `LpmKey<CidrKey> -> CidrMatch`.
pub const MAP_CIDR_ALLOW: &str = "CIDR_ALLOW";
/// `CidrExactKey -> CidrMatch` (hash): one entry per rule CIDR, under its prefix length.
pub const MAP_CIDR_ALLOW_EXACT: &str = "CIDR_ALLOW_EXACT";

/// Version of the pinned maps' layout (keys, values, which maps exist), kept in
/// `SG_META[1]`. A binary refuses to adopt pins of another layout instead of
/// misreading them.
pub const MAP_LAYOUT_VERSION: u64 = 2;
/// Elementary port intervals up to this many ports go to [`MAP_PORT_CLASS_EXACT`].
pub const PORT_EXACT_MAX_RUN: u32 = 8;
/// Prefix lengths a class may use and still be matched by hash lookups.
pub const CIDR_EXACT_MAX_LENS: usize = 6;
/// [`PortClass::n_lens`] of a class matched through the LPM trie [`MAP_CIDR_ALLOW`].
pub const CIDR_LENS_LPM: u8 = 0xff;

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

impl IfacePolicy {
    /// Bits of `flags` and `stats_slot` that fit [`IfacePolicy::pack`].
    pub const PACKED_FLAGS_MAX: u32 = 0xff;
    pub const PACKED_SLOT_MAX: u32 = 0xff_ffff;

    /// One word: policy id (bits 0-31), flags (32-39), stats slot (40-63). Never 0 for
    /// a binding (policy ids are not 0).
    #[inline(always)]
    pub const fn pack(&self) -> u64 {
        self.policy_id as u64
            | ((self.flags & Self::PACKED_FLAGS_MAX) as u64) << 32
            | ((self.stats_slot & Self::PACKED_SLOT_MAX) as u64) << 40
    }

    /// The binding packed in `word`, `None` for 0 (not managed).
    #[inline(always)]
    pub const fn unpack(word: u64) -> Option<IfacePolicy> {
        if word == 0 {
            return None;
        }
        Some(IfacePolicy {
            policy_id: word as u32,
            flags: (word >> 32) as u32 & Self::PACKED_FLAGS_MAX,
            stats_slot: (word >> 40) as u32,
            _pad: 0,
        })
    }
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

/// Value of [`MAP_PORT_CLASS`] and [`MAP_PORT_CLASS_EXACT`]: the class, and how its
/// CIDRs are matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortClass {
    pub class_id: u32,
    /// Number of prefix lengths in `lens`, or [`CIDR_LENS_LPM`].
    pub n_lens: u8,
    /// Prefix lengths of the class's CIDRs, longest first; unused slots are zero.
    pub lens: [u8; CIDR_EXACT_MAX_LENS + 1],
}

impl PortClass {
    /// `n_lens` and `lens` as one integer (byte 0: `n_lens`, byte i: `lens[i - 1]`), so
    /// the kernel passes them by value.
    #[inline(always)]
    pub const fn packed_lens(&self) -> u64 {
        let l = &self.lens;
        u64::from_le_bytes([self.n_lens, l[0], l[1], l[2], l[3], l[4], l[5], l[6]])
    }
}

/// Key data of [`MAP_CIDR_ALLOW`]; IPv4 addresses occupy the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrKey {
    pub policy_id: u32,
    pub class_id: u32,
    pub addr: [u8; 16],
}

/// Key of [`MAP_CIDR_ALLOW_EXACT`]: the remote address masked to `prefix_len` bits.
/// The address comes first and 8-aligned, so the kernel writes it as two words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrExactKey {
    pub addr: [u8; 16],
    pub policy_id: u32,
    pub class_id: u32,
    pub prefix_len: u8,
    pub _pad: [u8; 7],
}

/// `addr` with every bit past the first `prefix_len` (0..=128) cleared. IPv4 addresses
/// sit in the first four bytes, the rest zero, so one function serves both families.
#[inline(always)]
pub const fn mask_addr(addr: &[u8; 16], prefix_len: u8) -> [u8; 16] {
    let hi = u64::from_be_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]);
    let lo =
        u64::from_be_bytes([addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15]]);
    let (hi, lo) = mask_words(hi, lo, prefix_len);
    let (h, l) = (hi.to_be_bytes(), lo.to_be_bytes());
    [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]
}

/// [`mask_addr`] on the address as two big-endian words (`hi`: bytes 0-7). Branch-free:
/// the kernel runs it once per prefix length, and every branch would multiply the
/// paths the verifier walks.
#[inline(always)]
pub const fn mask_words(hi: u64, lo: u64, prefix_len: u8) -> (u64, u64) {
    // Bits kept in the low word: max(len - 64, 0), without a branch.
    let over = prefix_len as i64 - 64;
    let lo_bits = (over & !(over >> 63)) as u32;
    let hi_bits = prefix_len as u32 - lo_bits;
    (hi & high_bits(hi_bits), lo & high_bits(lo_bits))
}

/// A u64 with its `n` (0..=64) most significant bits set; two shifts so that no shift
/// reaches 64 (undefined in eBPF as in Rust).
#[inline(always)]
const fn high_bits(n: u32) -> u64 {
    !((u64::MAX >> (n / 2)) >> (n - n / 2))
}

/// Value of [`MAP_CIDR_ALLOW`] and [`MAP_CIDR_ALLOW_EXACT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrMatch {
    /// The first rule of the class with this CIDR, as the index of its counters in
    /// [`MAP_RULE_STATS`] ([`NO_COUNTER_SLOT`]: counted nowhere, e.g. geo exemptions).
    /// The compiler writes rule indices here; the daemon swaps in the slots.
    pub rule_slot: u32,
}

/// [`CidrMatch::rule_slot`] of entries that are not rules.
pub const NO_COUNTER_SLOT: u32 = u32::MAX;

/// Per-CPU array `counter slot -> RuleCounters`: packets and bytes each rule allowed.
/// An array, not a hash keyed by rule: its lookups are inlined by the verifier.
pub const MAP_RULE_STATS: &str = "RULE_STATS";
/// `RuleStatsKey -> counter slot (u32)`: which slot of [`MAP_RULE_STATS`] counts which
/// rule of which interface. Kept by the daemon; the kernel never reads it.
pub const MAP_RULE_SLOTS: &str = "RULE_SLOTS";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleStatsKey {
    pub ifindex: u32,
    /// The rule's 32-bit handle (the first four bytes of its UUID; its index where
    /// rules have no UUIDs).
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
    assert!(size_of::<PortClass>() == 12);
    assert!(size_of::<CidrExactKey>() == 32);
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
    unsafe impl aya::Pod for CidrExactKey {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_addr_keeps_exactly_the_prefix() {
        let all = [0xffu8; 16];
        for len in 0..=128u8 {
            let m = mask_addr(&all, len);
            let ones: u32 = m.iter().map(|b| b.count_ones()).sum();
            assert_eq!(ones, u32::from(len), "/{len}");
            // The kept bits are the leading ones.
            let v = u128::from_be_bytes(m);
            assert_eq!(v.leading_ones(), u32::from(len), "/{len}");
        }
        let v4 = [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(mask_addr(&v4, 24)[..4], [10, 1, 2, 0]);
        assert_eq!(mask_addr(&v4, 32), v4);
        assert_eq!(mask_addr(&v4, 0), [0; 16]);
    }
}
