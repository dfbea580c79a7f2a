//! Pure core: an instance's rules -> the entries of the two classification tries.
//!
//! For each direction, family and protocol the port space is cut into elementary
//! intervals at every rule boundary. Each interval gets the *class* of rules covering
//! it (plus the any-protocol rules, which cover every port of every protocol); equal
//! sets share a class. Intervals become port prefixes in `PORT_CLASS`; each class's
//! CIDRs go into `CIDR_ALLOW`. A packet then needs exactly two LPM lookups:
//! port -> class, remote address within the class. Gaps between a protocol's
//! intervals fall back (as a shorter prefix) to the any-protocol class.
//!
//! Entry counts are linear in the rules for the common shapes (many ports from few
//! CIDRs, or few ports from many CIDRs); adversarial overlaps can grow towards
//! rules x rules, which is why [`CompiledPolicy::len`] is checked against the map
//! capacity before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use sg_common::abi::{
    CIDR_KEY_FIXED_BITS, CidrKey, CidrMatch, PORT_KEY_FIXED_BITS, PORT_KEY_PORT_OFFSET_BITS, PortClass,
    PortClassKey,
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
    pub port_classes: Vec<LpmEntry<PortClassKey, PortClass>>,
    pub cidrs: Vec<LpmEntry<CidrKey, CidrMatch>>,
}

impl CompiledPolicy {
    pub fn len(&self) -> usize {
        self.port_classes.len() + self.cidrs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            value: CidrMatch { rule_id: u32::MAX },
        });
    }
    out
}

/// Compiles `rules` (assumed valid) under `policy_id`.
pub fn compile(policy_id: u32, rules: &[Rule]) -> CompiledPolicy {
    let mut out = CompiledPolicy { policy_id, ..Default::default() };
    // Rule-index set -> class id. Sets never span directions or families, so one
    // table for the whole policy is enough.
    let mut classes: HashMap<BTreeSet<usize>, u32> = HashMap::new();
    let mut intern = |set: BTreeSet<usize>, out: &mut CompiledPolicy| -> u32 {
        if let Some(id) = classes.get(&set) {
            return *id;
        }
        let id = classes.len() as u32 + 1;
        emit_cidrs(out, policy_id, id, &set, rules);
        classes.insert(set, id);
        id
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
                let class_id = intern(any_proto.clone(), &mut out);
                out.port_classes.push(LpmEntry {
                    prefix_len: PORT_KEY_FIXED_BITS,
                    key: base,
                    value: PortClass { class_id },
                });
            }
            for (protocol, ranges) in by_proto {
                for (lo, hi, set) in elementary_intervals(&ranges) {
                    let mut set = set;
                    set.extend(any_proto.iter().copied());
                    let class_id = intern(set, &mut out);
                    for (port, bits) in range_to_prefixes(lo, hi) {
                        out.port_classes.push(LpmEntry {
                            prefix_len: PORT_KEY_PORT_OFFSET_BITS + bits,
                            key: PortClassKey { protocol, port_be: port.to_be(), ..base },
                            value: PortClass { class_id },
                        });
                    }
                }
            }
        }
    }
    out
}

fn emit_cidrs(
    out: &mut CompiledPolicy,
    policy_id: u32,
    class_id: u32,
    set: &BTreeSet<usize>,
    rules: &[Rule],
) {
    // Same CIDR twice in a class: keep the first rule (lowest index) as the match.
    let mut seen: BTreeMap<IpNet, usize> = BTreeMap::new();
    for &i in set {
        seen.entry(rules[i].cidr).or_insert(i);
    }
    for (cidr, rule_index) in seen {
        out.cidrs.push(LpmEntry {
            prefix_len: CIDR_KEY_FIXED_BITS + u32::from(cidr.prefix_len()),
            key: CidrKey { policy_id, class_id, addr: addr_bytes(&cidr) },
            value: CidrMatch { rule_id: rule_index as u32 },
        });
    }
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

/// Evaluates a compiled policy the way the kernel's two lookups do (longest prefix
/// wins), for tests that check the compiler against the reference classifier.
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
    let class = policy
        .port_classes
        .iter()
        .filter(|e| prefix_match(&port_key_bytes(&e.key), &port_key_bytes(&want), e.prefix_len))
        .max_by_key(|e| e.prefix_len)?
        .value
        .class_id;
    let net = IpNet::from(remote);
    let want = CidrKey { policy_id: policy.policy_id, class_id: class, addr: addr_bytes(&net) };
    policy
        .cidrs
        .iter()
        .filter(|e| prefix_match(&cidr_key_bytes(&e.key), &cidr_key_bytes(&want), e.prefix_len))
        .max_by_key(|e| e.prefix_len)
        .map(|e| e.value.rule_id)
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
