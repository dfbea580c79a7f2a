//! Maps shared with `sg-daemon`, pinned by name under the daemon's bpffs directory so
//! enforcement outlives the daemon. Sizes here are defaults; the loader overrides them
//! from the configured limits.
use aya_ebpf::bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sg_common::abi::{
    CidrExactKey, CidrKey, CidrMatch, CtEntry, CtKey, CtTimeouts, EventBudget, FragEntry, FragKey, GeoConfig,
    GeoKey, GeoValue, IFACE_INDEX_SLOTS, IfaceCounters, IfacePolicy, PortClass, PortClassKey, RuleCounters,
    RuleStatsKey,
};

/// ifindex -> policy of the instance behind it, for ifindexes from `IFACE_INDEX_SLOTS` on.
#[map]
pub static IFACE_POLICY: HashMap<u32, IfacePolicy> = HashMap::pinned(4096, 0);

/// ifindex -> packed policy (0: not managed) below `IFACE_INDEX_SLOTS`; the daemon
/// writes it through a shared mapping, one atomic store per binding.
#[map]
pub static IFACE_POLICY_BY_INDEX: Array<u64> = Array::pinned(IFACE_INDEX_SLOTS, BPF_F_MMAPABLE);

/// {policy, direction, family, protocol, port} -> port class, for single ports and
/// short runs (asked first). Entries are allocated as written (no preallocation): the
/// map costs memory for what it holds, not for its capacity.
#[map]
pub static PORT_CLASS_EXACT: HashMap<PortClassKey, PortClass> = HashMap::pinned(262_144, BPF_F_NO_PREALLOC);

/// {policy, direction, family, protocol, port prefix} -> port class, for port ranges
/// and the any-protocol fallback (asked when the exact map misses).
#[map]
pub static PORT_CLASS: LpmTrie<PortClassKey, PortClass> = LpmTrie::pinned(262_144, 0);

/// {policy, class, prefix length, masked remote} -> first matching rule, for classes
/// with few prefix lengths (see `sg_common::abi`).
#[map]
pub static CIDR_ALLOW_EXACT: HashMap<CidrExactKey, CidrMatch> = HashMap::pinned(262_144, BPF_F_NO_PREALLOC);

/// {policy, class, remote prefix} -> first matching rule, for the other classes and
/// the geo-block exemptions.
#[map]
pub static CIDR_ALLOW: LpmTrie<CidrKey, CidrMatch> = LpmTrie::pinned(262_144, 0);

/// Confirmed flows: CtKey -> CtEntry (LRU).
#[map]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(262_144, 0);

/// Unconfirmed flows (handshake incomplete / no reply yet): CtKey -> CtEntry (LRU).
#[map]
pub static CT_NEW: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(65_536, 0);

/// 0 -> idle timeouts in seconds (all zero = built-in defaults).
#[map]
pub static CT_CONFIG: Array<CtTimeouts> = Array::pinned(1, 0);

/// {prefix set, family, address} -> country of the geo-blocked networks.
#[map]
pub static GEO_BLOCK: LpmTrie<GeoKey, GeoValue> = LpmTrie::pinned(1_000_000, 0);

/// 0 -> geo-block configuration (set id 0: off).
#[map]
pub static GEO_CONFIG: Array<GeoConfig> = Array::pinned(1, 0);

/// Interface stats slot -> packets per reason, per CPU (slots are assigned by the
/// daemon when it binds an interface).
#[map]
pub static IFACE_STATS: PerCpuArray<IfaceCounters> = PerCpuArray::pinned(4096, 0);

/// Drop events for the agent (`sg-daemon events`).
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// 0 -> per-CPU rate-limit state of drop events.
#[map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);

/// Allowed first fragments: the rest of their packet follows their verdict (LRU).
#[map]
pub static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::pinned(16_384, 0);

/// Counter slot -> packets and bytes the rule allowed, per CPU (the daemon hands out
/// the slots and zeroes them; the kernel only increments).
#[map]
pub static RULE_STATS: PerCpuArray<RuleCounters> = PerCpuArray::pinned(262_144, 0);

/// {ifindex, rule} -> counter slot in `RULE_STATS`: the daemon's bookkeeping, declared
/// here so that it is created and pinned with the other maps.
#[map]
pub static RULE_SLOTS: HashMap<RuleStatsKey, u32> = HashMap::pinned(262_144, 0);

/// 0 -> hash of the eBPF object whose programs are pinned: lets the daemon skip
/// re-verifying unchanged programs, and spot an upgrade.
#[map]
pub static SG_META: Array<u64> = Array::pinned(4, 0);
