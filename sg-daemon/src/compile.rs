//! Pure core: an instance's rules -> the entries of the classification maps.
//!
//! For each direction, family and protocol the port space is cut into elementary
//! intervals at every rule boundary. Each interval gets the *class* of rules covering
//! it (plus the any-protocol rules, which cover every port of every protocol); equal
//! sets share a class. Short intervals (up to `PORT_EXACT_MAX_RUN` ports) are written
//! port by port to `PORT_CLASS_EXACT`, longer ones as port prefixes to `PORT_CLASS`.
//! Each class's CIDRs go to `CIDR_ALLOW_EXACT` under their prefix length when the
//! class uses at most `CIDR_EXACT_MAX_LENS` lengths, else to `CIDR_ALLOW`. A packet
//! then needs one port lookup and, usually, one CIDR lookup per prefix length of its
//! class (see `sg_common::abi`). Gaps between a protocol's intervals fall back (as a
//! shorter prefix) to the any-protocol class.
//!
//! Entry counts are linear in the rules for the common shapes (many ports from few
//! CIDRs, or few ports from many CIDRs); adversarial overlaps can grow towards
//! rules x rules, which is why [`CompiledPolicy::len`] is checked against the map
//! capacity before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use sg_common::abi::{
    CIDR_EXACT_MAX_LENS, CIDR_KEY_FIXED_BITS, CIDR_LENS_LPM, CidrExactKey, CidrKey, CidrMatch,
    NO_COUNTER_SLOT, PORT_EXACT_MAX_RUN, PORT_KEY_FIXED_BITS, PORT_KEY_PORT_OFFSET_BITS, PortClass,
    PortClassKey, mask_addr,
};
use sg_common::model::{Direction, EtherType, Rule};

/// One LPM entry: prefix length in bits, key data, value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmEntry<K, V> {
    pub prefix_len: u32,
    pub key: K,
    pub value: V,
}

/// Map contents for one policy id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub policy_id: u32,
    /// `PORT_CLASS` (port ranges, any-protocol fallback).
    pub port_classes: Vec<LpmEntry<PortClassKey, PortClass>>,
    /// `PORT_CLASS_EXACT` (single ports, short runs).
    pub port_exact: Vec<(PortClassKey, PortClass)>,
    /// `CIDR_ALLOW` (classes with many prefix lengths, geo exemptions).
    pub cidrs: Vec<LpmEntry<CidrKey, CidrMatch>>,
    /// `CIDR_ALLOW_EXACT` (classes with few prefix lengths).
    pub cidr_exact: Vec<(CidrExactKey, CidrMatch)>,
}

impl CompiledPolicy {
    pub fn len(&self) -> usize {
        self.port_entries() + self.cidr_entries()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entries of both port maps.
    pub fn port_entries(&self) -> usize {
        self.port_classes.len() + self.port_exact.len()
    }
    /// Entries of both CIDR maps.
    pub fn cidr_entries(&self) -> usize {
        self.cidrs.len() + self.cidr_exact.len()
    }
    /// Re-keys every entry under `policy_id`.
    pub fn set_policy_id(&mut self, policy_id: u32) {
        self.policy_id = policy_id;
        self.port_classes.iter_mut().for_each(|e| e.key.policy_id = policy_id);
        self.port_exact.iter_mut().for_each(|e| e.0.policy_id = policy_id);
        self.cidrs.iter_mut().for_each(|e| e.key.policy_id = policy_id);
        self.cidr_exact.iter_mut().for_each(|e| e.0.policy_id = policy_id);
    }
    /// Replaces the rule indices the compiler wrote into the CIDR entries by the
    /// rules' counter slots (`slots[index]`); other entries count nowhere.
    pub fn set_counter_slots(&mut self, slots: &[u32]) {
        let slot = |index: u32| slots.get(index as usize).copied().unwrap_or(NO_COUNTER_SLOT);
        self.cidrs.iter_mut().for_each(|e| e.value.rule_slot = slot(e.value.rule_slot));
        self.cidr_exact.iter_mut().for_each(|e| e.1.rule_slot = slot(e.1.rule_slot));
    }
}

/// Compiles an instance's rules and geo-block exemptions under `policy_id`. The
/// exemptions live in `CIDR_ALLOW` under the reserved class `GEO_EXEMPT_CLASS`, so
/// they switch together with the rules.
pub fn compile_instance(policy_id: u32, rules: &[Rule], geo_exempt: &[IpNet]) -> CompiledPolicy {
    let mut out = compile(policy_id, rules);
    for cidr in geo_exempt {
        out.cidrs.push(LpmEntry {
            prefix_len: CIDR_KEY_FIXED_BITS + u32::from(cidr.prefix_len()),
            key: CidrKey { policy_id, class_id: sg_common::abi::GEO_EXEMPT_CLASS, addr: addr_bytes(cidr) },
            value: CidrMatch { rule_slot: NO_COUNTER_SLOT },
        });
    }
    out
}

/// Compiles `rules` (assumed valid) under `policy_id`.
pub fn compile(policy_id: u32, rules: &[Rule]) -> CompiledPolicy {
    let mut out = CompiledPolicy { policy_id, ..Default::default() };
    // Rule-index set -> class id. Sets never span directions or families, so one
    // table for the whole policy is enough.
    let mut classes: HashMap<BTreeSet<usize>, PortClass> = HashMap::new();
    let mut intern = |set: BTreeSet<usize>, out: &mut CompiledPolicy| -> PortClass {
        if let Some(class) = classes.get(&set) {
            return *class;
        }
        let class = emit_cidrs(out, policy_id, classes.len() as u32 + 1, &set, rules);
        classes.insert(set, class);
        class
    };

    for direction in [Direction::Ingress, Direction::Egress] {
        for ethertype in [EtherType::IPv4, EtherType::IPv6] {
            let selected = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.direction == direction && r.ethertype == ethertype);
            let mut any_proto = BTreeSet::new();
            let mut by_proto: BTreeMap<u8, Vec<(usize, u32, u32)>> = BTreeMap::new();
            for (i, rule) in selected {
                let range = rule.port_key_range();
                match rule.effective_protocol().number() {
                    None => {
                        any_proto.insert(i);
                    }
                    Some(p) => by_proto.entry(p).or_default().push((i, range.min.into(), range.max.into())),
                }
            }
            let base = PortClassKey {
                policy_id,
                direction: direction.code(),
                family: ethertype.family(),
                ..Default::default()
            };
            if !any_proto.is_empty() {
                let value = intern(any_proto.clone(), &mut out);
                out.port_classes.push(LpmEntry { prefix_len: PORT_KEY_FIXED_BITS, key: base, value });
            }
            for (protocol, ranges) in by_proto {
                for (lo, hi, set) in elementary_intervals(&ranges) {
                    let mut set = set;
                    set.extend(any_proto.iter().copied());
                    let value = intern(set, &mut out);
                    if hi - lo < PORT_EXACT_MAX_RUN {
                        for port in lo..=hi {
                            let port_be = (port as u16).to_be();
                            out.port_exact.push((PortClassKey { protocol, port_be, ..base }, value));
                        }
                        continue;
                    }
                    for (port, bits) in range_to_prefixes(lo, hi) {
                        out.port_classes.push(LpmEntry {
                            prefix_len: PORT_KEY_PORT_OFFSET_BITS + bits,
                            key: PortClassKey { protocol, port_be: port.to_be(), ..base },
                            value,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Writes the CIDRs of class `class_id` (rules `set`) and returns its port-map value.
fn emit_cidrs(
    out: &mut CompiledPolicy,
    policy_id: u32,
    class_id: u32,
    set: &BTreeSet<usize>,
    rules: &[Rule],
) -> PortClass {
    // Same CIDR twice in a class: keep the first rule (lowest index) as the match.
    let mut seen: BTreeMap<IpNet, usize> = BTreeMap::new();
    for &i in set {
        seen.entry(rules[i].cidr).or_insert(i);
    }
    let lens: BTreeSet<u8> = seen.keys().map(|c| c.prefix_len()).collect();
    if lens.len() > CIDR_EXACT_MAX_LENS {
        for (cidr, rule_index) in seen {
            out.cidrs.push(LpmEntry {
                prefix_len: CIDR_KEY_FIXED_BITS + u32::from(cidr.prefix_len()),
                key: CidrKey { policy_id, class_id, addr: addr_bytes(&cidr) },
                value: CidrMatch { rule_slot: rule_index as u32 },
            });
        }
        return PortClass { class_id, n_lens: CIDR_LENS_LPM, lens: [0; CIDR_EXACT_MAX_LENS + 1] };
    }
    for (cidr, rule_index) in seen {
        let prefix_len = cidr.prefix_len();
        let key = CidrExactKey { addr: addr_bytes(&cidr), policy_id, class_id, prefix_len, _pad: [0; 7] };
        debug_assert_eq!(key.addr, mask_addr(&key.addr, prefix_len), "CIDRs are stored as networks");
        out.cidr_exact.push((key, CidrMatch { rule_slot: rule_index as u32 }));
    }
    let mut value = PortClass { class_id, n_lens: lens.len() as u8, lens: [0; CIDR_EXACT_MAX_LENS + 1] };
    for (slot, len) in value.lens.iter_mut().zip(lens.iter().rev()) {
        *slot = *len;
    }
    value
}

/// An address as key bytes: IPv4 in the first four bytes, the rest zero.
pub fn addr_bytes(net: &IpNet) -> [u8; 16] {
    let mut out = [0u8; 16];
    match net {
        IpNet::V4(n) => out[..4].copy_from_slice(&n.network().octets()),
        IpNet::V6(n) => out = n.network().octets(),
    }
    out
}

/// Cuts inclusive ranges `(rule, lo, hi)` into maximal runs of ports covered by the
/// same non-empty rule set: `(lo, hi, rules)`.
fn elementary_intervals(ranges: &[(usize, u32, u32)]) -> Vec<(u32, u32, BTreeSet<usize>)> {
    let mut cuts: Vec<u32> = ranges.iter().flat_map(|&(_, lo, hi)| [lo, hi + 1]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(u32, u32, BTreeSet<usize>)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let set: BTreeSet<usize> =
            ranges.iter().filter(|&&(_, a, b)| a <= lo && hi <= b).map(|&(i, _, _)| i).collect();
        if set.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 + 1 == lo && last.2 == set => last.1 = hi,
            _ => out.push((lo, hi, set)),
        }
    }
    out
}

/// Splits the inclusive 16-bit range `[lo, hi]` into the fewest aligned prefixes:
/// `(first port, prefix bits)`. At most 30 for any range.
pub fn range_to_prefixes(lo: u32, hi: u32) -> Vec<(u16, u32)> {
    debug_assert!(lo <= hi && hi <= 0xffff);
    let mut out = Vec::new();
    let mut lo = lo;
    while lo <= hi {
        // Largest aligned block starting at `lo` that fits in the range.
        let mut size = if lo == 0 { 1 << 16 } else { 1u32 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// Evaluates a compiled policy the way the kernel's lookups do (exact port, else the
/// longest port prefix; then the class's prefix lengths longest first, or the longest
/// CIDR prefix), for tests that check the compiler against the reference classifier.
pub fn lookup(
    policy: &CompiledPolicy,
    direction: Direction,
    protocol: u8,
    port_key: u16,
    remote: std::net::IpAddr,
) -> Option<u32> {
    let family = EtherType::of_addr(&remote).family();
    let want = PortClassKey {
        policy_id: policy.policy_id,
        direction: direction.code(),
        family,
        protocol,
        port_be: port_key.to_be(),
        ..Default::default()
    };
    let class = match policy.port_exact.iter().find(|(k, _)| *k == want) {
        Some((_, class)) => *class,
        None => {
            policy
                .port_classes
                .iter()
                .filter(|e| prefix_match(&port_key_bytes(&e.key), &port_key_bytes(&want), e.prefix_len))
                .max_by_key(|e| e.prefix_len)?
                .value
        }
    };
    let addr = addr_bytes(&IpNet::from(remote));
    if class.n_lens == CIDR_LENS_LPM {
        let want = CidrKey { policy_id: policy.policy_id, class_id: class.class_id, addr };
        return policy
            .cidrs
            .iter()
            .filter(|e| prefix_match(&cidr_key_bytes(&e.key), &cidr_key_bytes(&want), e.prefix_len))
            .max_by_key(|e| e.prefix_len)
            .map(|e| e.value.rule_slot);
    }
    class.lens[..usize::from(class.n_lens)].iter().find_map(|&prefix_len| {
        let want = CidrExactKey {
            addr: mask_addr(&addr, prefix_len),
            policy_id: policy.policy_id,
            class_id: class.class_id,
            prefix_len,
            _pad: [0; 7],
        };
        policy.cidr_exact.iter().find(|(k, _)| *k == want).map(|(_, m)| m.rule_slot)
    })
}

fn port_key_bytes(k: &PortClassKey) -> Vec<u8> {
    let mut v = k.policy_id.to_ne_bytes().to_vec();
    v.extend([k.direction, k.family, k.protocol, k._pad]);
    v.extend(k.port_be.to_ne_bytes());
    v
}

fn cidr_key_bytes(k: &CidrKey) -> Vec<u8> {
    let mut v = k.policy_id.to_ne_bytes().to_vec();
    v.extend(k.class_id.to_ne_bytes());
    v.extend(k.addr);
    v
}

fn prefix_match(entry: &[u8], key: &[u8], bits: u32) -> bool {
    (0..bits as usize).all(|b| {
        let mask = 0x80 >> (b % 8);
        entry[b / 8] & mask == key[b / 8] & mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sg_common::model::{Os, PortRange, Protocol, default_rules};
    use sg_common::reference::{IpPacket, first_matching_rule};
    use std::net::IpAddr;

    #[test]
    fn prefixes_cover_exactly() {
        for (lo, hi) in [(0, 65535), (1, 65535), (22, 22), (1024, 65535), (80, 443), (0, 0), (65535, 65535)] {
            let p = range_to_prefixes(lo, hi);
            let covered: u32 = p.iter().map(|&(_, bits)| 1u32 << (16 - bits)).sum();
            assert_eq!(covered, hi - lo + 1, "{lo}-{hi}");
            assert!(p.len() <= 30);
        }
        assert_eq!(range_to_prefixes(1, 65535).len(), 16);
        assert_eq!(range_to_prefixes(0, 65535), vec![(0, 0)]);
    }

    #[test]
    fn defaults_compile_small() {
        let c = compile(7, &default_rules(Os::Windows));
        // 443, 22, 9833 share the tcp protocol but have distinct single-port classes
        // ... or one class each; either way: a handful of entries.
        assert!(c.len() < 20, "{c:?}");
        let ok = |port| lookup(&c, Direction::Ingress, 6, port, "1.2.3.4".parse().unwrap()).is_some();
        assert!(ok(22) && ok(443) && ok(9833) && !ok(80));
    }

    #[test]
    fn few_prefix_lengths_go_to_hashes_many_to_the_trie() {
        let rule = |port: u16, cidr: &str| {
            let mut r = Rule::new(Direction::Ingress, EtherType::IPv4, Protocol::Tcp, cidr.parse().unwrap());
            r.ports = Some(PortRange { min: port, max: port });
            r
        };
        // Port 22 from six prefix lengths, port 80 from seven, 8000-8100 from one.
        let mut rules: Vec<Rule> = [8, 16, 20, 24, 28, 32]
            .iter()
            .map(|len| rule(22, &format!("10.0.0.0/{len}")))
            .chain([8, 12, 16, 20, 24, 28, 32].iter().map(|len| rule(80, &format!("10.0.0.0/{len}"))))
            .collect();
        let mut range = rule(8000, "192.0.2.0/24");
        range.ports = Some(PortRange { min: 8000, max: 8100 });
        rules.push(range);
        let c = compile(5, &rules);
        assert_eq!(c.port_exact.len(), 2, "22 and 80 are single ports");
        assert!(!c.port_classes.is_empty(), "8000-8100 is a range");
        assert_eq!(c.cidr_exact.len(), 6 + 1, "port 22's and the range's CIDRs");
        assert_eq!(c.cidrs.len(), 7, "port 80's seven lengths");
        let class_22 = c.port_exact.iter().find(|(k, _)| k.port_be == 22u16.to_be()).unwrap().1;
        assert_eq!(class_22.n_lens, 6);
        assert_eq!(&class_22.lens[..6], &[32, 28, 24, 20, 16, 8], "longest first");
        // Longest prefix names the rule, in both modes.
        let at = |port, addr: &str| lookup(&c, Direction::Ingress, 6, port, addr.parse().unwrap());
        assert_eq!(at(22, "10.0.0.0"), Some(5));
        assert_eq!(at(22, "10.0.0.1"), Some(4));
        assert_eq!(at(22, "10.0.0.17"), Some(3));
        assert_eq!(at(22, "10.200.0.1"), Some(0));
        assert_eq!(at(80, "10.0.0.0"), Some(12));
        assert_eq!(at(80, "10.0.0.1"), Some(11));
        assert_eq!(at(80, "10.9.0.1"), Some(7));
        assert_eq!(at(80, "11.0.0.1"), None);
        assert_eq!(at(8050, "192.0.2.9"), Some(13));
        assert_eq!(at(8101, "192.0.2.9"), None);
    }

    #[test]
    fn short_runs_are_exact_long_ones_prefixes() {
        let mut r =
            Rule::new(Direction::Ingress, EtherType::IPv4, Protocol::Udp, "0.0.0.0/0".parse().unwrap());
        r.ports = Some(PortRange { min: 1000, max: 1000 + PORT_EXACT_MAX_RUN as u16 - 1 });
        let c = compile(1, std::slice::from_ref(&r));
        assert_eq!(c.port_exact.len(), PORT_EXACT_MAX_RUN as usize);
        assert!(c.port_classes.is_empty());
        r.ports = Some(PortRange { min: 1000, max: 1000 + PORT_EXACT_MAX_RUN as u16 });
        let c = compile(1, &[r]);
        assert!(c.port_exact.is_empty());
        assert!(!c.port_classes.is_empty());
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let proto = prop_oneof![
            Just(Protocol::Any),
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Icmp),
            Just(Protocol::Number(47))
        ];
        let port = prop_oneof![Just(1u16), Just(22), Just(80), Just(443), Just(1024), Just(65535), 1u16..];
        (
            any::<bool>(),
            any::<bool>(),
            proto,
            port.clone(),
            port,
            0u8..=32,
            any::<[u8; 4]>(),
            0u8..=128,
            any::<bool>(),
        )
            .prop_map(|(ing, v4, protocol, a, b, len4, a4, len6, with_ports)| {
                let direction = if ing { Direction::Ingress } else { Direction::Egress };
                let (ethertype, cidr) = if v4 {
                    let net: IpNet = ipnet::Ipv4Net::new(a4.into(), len4).unwrap().trunc().into();
                    (EtherType::IPv4, net)
                } else {
                    let addr = std::net::Ipv6Addr::new(
                        0xfd00,
                        u16::from(a4[0] & 3),
                        0,
                        0,
                        0,
                        0,
                        0,
                        u16::from(a4[1]),
                    );
                    (EtherType::IPv6, ipnet::Ipv6Net::new(addr, len6).unwrap().trunc().into())
                };
                let mut rule = Rule::new(direction, ethertype, protocol, cidr);
                if with_ports && protocol.has_ports() {
                    rule.ports = Some(PortRange { min: a.min(b), max: a.max(b) });
                }
                rule
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The compiled tries decide exactly what the linear reference decides.
        #[test]
        fn compiled_lookup_equals_reference(
            rules in proptest::collection::vec(arb_rule(), 0..12),
            probes in proptest::collection::vec((any::<bool>(), any::<bool>(), prop_oneof![Just(6u8), Just(17), Just(1), Just(47), Just(58)], prop_oneof![Just(22u16), Just(80), Just(443), Just(1), Just(65535), any::<u16>()], any::<[u8; 4]>()), 50),
        ) {
            let compiled = compile(3, &rules);
            for (ing, v4, protocol, port, a) in probes {
                let direction = if ing { Direction::Ingress } else { Direction::Egress };
                let remote: IpAddr = if v4 { a.into() } else { std::net::Ipv6Addr::new(0xfd00, u16::from(a[0] & 3), 0, 0, 0, 0, 0, u16::from(a[1])).into() };
                let pkt = IpPacket { port_key: port, ..IpPacket::new(remote, remote, protocol) };
                let want = first_matching_rule(&rules, direction, &pkt).is_some();
                let got = lookup(&compiled, direction, protocol, port, remote).is_some();
                prop_assert_eq!(got, want, "rules {:?} probe {:?}", rules, (direction, protocol, port, remote));
            }
        }
    }
}
