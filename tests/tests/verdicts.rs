//! The kernel programs' verdicts, through BPF_PROG_TEST_RUN, against the reference
//! classifier: hand-picked cases for every rule field, then a seeded differential run
//! over random rule sets and random (often malformed) frames.
//!
//! `SG_DIFF_SEED` picks the seed (default fixed for CI; `random` draws one and prints
//! it), `SG_DIFF_PACKETS` the number of (frame, direction) runs (default 100,000).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sg_common::abi::Reason;
use sg_common::model::{Direction, EtherType, Os, PortRange, Protocol, Rule, default_rules};
use sg_tests::kernel::frames::{L4, frame};
use sg_tests::kernel::{KernelFixture, Twin};

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn default_rules_every_field_both_directions() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    let rules = default_rules(Os::Windows);
    t.set_rules(&rules);
    let remote = v4("198.51.100.7");
    let inst = v4("10.0.0.2");
    let syn = |dport| L4::Tcp { sport: 40000, dport, flags: 0x02 };
    use Direction::{Egress, Ingress};
    // Ingress tcp: listed ports only.
    for (port, want) in
        [(22, true), (443, true), (9833, true), (80, false), (21, false), (23, false), (442, false)]
    {
        let r = t.check(Ingress, &frame(remote, inst, syn(port), b""));
        assert_eq!(r.is_allow(), want, "tcp/{port}");
    }
    // Ingress udp: no rule. ICMP: any type.
    assert_eq!(
        t.check(Ingress, &frame(remote, inst, L4::Udp { sport: 53, dport: 53 }, b"")),
        Reason::DropNoRule
    );
    assert_eq!(
        t.check(Ingress, &frame(remote, inst, L4::Icmp { kind: 8, code: 0, id: 1 }, b"")),
        Reason::AllowRule
    );
    assert_eq!(t.check(Ingress, &frame(remote, inst, L4::Other { protocol: 47 }, b"")), Reason::DropNoRule);
    // Egress any, v4 and v6.
    for l4 in [
        syn(80),
        L4::Udp { sport: 1, dport: 53 },
        L4::Icmp { kind: 8, code: 0, id: 3 },
        L4::Other { protocol: 47 },
    ] {
        assert_eq!(t.check(Egress, &frame(inst, remote, l4, b"")), Reason::AllowRule);
        assert_eq!(
            t.check(Egress, &frame("fd00::2".parse().unwrap(), "2001:db8::1".parse().unwrap(), l4, b"")),
            Reason::AllowRule
        );
    }
    // IPv6 ingress: no rule under the defaults (ICMPv6 echo included), but neighbour
    // discovery passes.
    let (r6, i6): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "fd00::2".parse().unwrap());
    assert_eq!(t.check(Ingress, &frame(r6, i6, syn(22), b"")), Reason::DropNoRule);
    assert_eq!(
        t.check(Ingress, &frame(r6, i6, L4::Icmp { kind: 128, code: 0, id: 1 }, b"")),
        Reason::DropNoRule
    );
    for nd in 133..=136 {
        assert_eq!(
            t.check(Ingress, &frame(r6, i6, L4::Icmp { kind: nd, code: 0, id: 0 }, &[0; 16])),
            Reason::AllowInfra
        );
    }
    // RA guard: an instance may solicit routers and resolve neighbours, but never
    // advertise itself as a router or send redirects, whatever the (egress any) rules say.
    for (kind, want) in [
        (133, Reason::AllowInfra),
        (135, Reason::AllowInfra),
        (136, Reason::AllowInfra),
        (134, Reason::DropRaGuard),
        (137, Reason::DropRaGuard),
    ] {
        assert_eq!(
            t.check(Egress, &frame(i6, r6, L4::Icmp { kind, code: 0, id: 0 }, &[0; 32])),
            want,
            "icmpv6 type {kind}"
        );
    }
    assert_eq!(
        t.check(Ingress, &frame(r6, i6, L4::Icmp { kind: 137, code: 0, id: 0 }, &[0; 32])),
        Reason::DropNoRule
    );
}

#[test]
fn cidr_port_range_protocol_number_icmp_type() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let mut icmp_echo = Rule::new(Direction::Ingress, EtherType::IPv4, Protocol::Icmp, net("0.0.0.0/0"));
    icmp_echo.icmp_type = Some(8);
    icmp_echo.icmp_code = Some(0);
    let rules = vec![
        Rule::new(Direction::Ingress, EtherType::IPv4, Protocol::Tcp, net("10.10.10.0/24"))
            .with_ports(PortRange { min: 8000, max: 8080 }),
        Rule::new(Direction::Ingress, EtherType::IPv6, Protocol::Udp, net("2001:db8:1::/48"))
            .with_ports(PortRange::single(53)),
        Rule::new(Direction::Ingress, EtherType::IPv4, Protocol::Number(47), net("192.0.2.0/30")),
        icmp_echo,
        Rule::new(Direction::Egress, EtherType::IPv4, Protocol::Tcp, net("203.0.113.0/24"))
            .with_ports(PortRange::single(443)),
    ];
    t.set_rules(&rules);
    let inst = v4("10.0.0.2");
    let mut cases = Vec::new();
    for src in ["10.10.10.0", "10.10.10.255", "10.10.9.255", "10.10.11.0"] {
        for dport in [7999, 8000, 8040, 8080, 8081] {
            cases
                .push((Direction::Ingress, frame(v4(src), inst, L4::Tcp { sport: 1, dport, flags: 2 }, b"")));
        }
    }
    for src in ["2001:db8:1::1", "2001:db8:1:ffff:ffff:ffff:ffff:ffff", "2001:db8:2::1"] {
        for dport in [52, 53, 54] {
            let f = frame(src.parse().unwrap(), "fd00::2".parse().unwrap(), L4::Udp { sport: 9, dport }, b"");
            cases.push((Direction::Ingress, f));
        }
    }
    for src in ["192.0.2.0", "192.0.2.3", "192.0.2.4"] {
        cases.push((Direction::Ingress, frame(v4(src), inst, L4::Other { protocol: 47 }, b"x")));
        cases.push((Direction::Ingress, frame(v4(src), inst, L4::Other { protocol: 48 }, b"x")));
    }
    for (kind, code) in [(8, 0), (8, 1), (0, 0), (3, 4)] {
        cases.push((Direction::Ingress, frame(v4("1.1.1.1"), inst, L4::Icmp { kind, code, id: 7 }, b"")));
    }
    for dst in ["203.0.113.1", "203.0.114.1"] {
        for dport in [443, 80] {
            cases.push((Direction::Egress, frame(inst, v4(dst), L4::Tcp { sport: 5, dport, flags: 2 }, b"")));
        }
    }
    let mut allowed = 0;
    for (d, f) in &cases {
        allowed += usize::from(t.check(*d, f).is_allow());
    }
    // Sanity that the table exercises both outcomes.
    assert!(allowed > 5 && allowed < cases.len() - 5, "{allowed}/{}", cases.len());
}

#[test]
fn unmanaged_interface_is_never_touched() {
    sg_tests::require_root!();
    let mut fx = KernelFixture::new().unwrap();
    fx.set_rules(&[]).unwrap();
    let f = frame(v4("1.2.3.4"), v4("10.0.0.2"), L4::Tcp { sport: 1, dport: 80, flags: 2 }, b"");
    assert_eq!(fx.verdict(Direction::Ingress, &f).unwrap(), (false, Some(Reason::DropNoRule)));
    fx.unmanage().unwrap();
    assert_eq!(fx.verdict(Direction::Ingress, &f).unwrap(), (true, None));
    let garbage = [0xffu8; 20];
    assert_eq!(fx.verdict(Direction::Egress, &garbage).unwrap(), (true, None));
}

// ---------------------------------------------------------------------------------
// Differential testing: random rules, random frames biased towards boundaries.

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn v4_addr(&mut self) -> Ipv4Addr {
        // A small space so prefixes overlap and nest.
        Ipv4Addr::new(10, self.rng.random_range(0..4), self.rng.random_range(0..4), self.rng.random())
    }

    fn v6_addr(&mut self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            self.rng.random_range(0..4),
            0,
            0,
            0,
            0,
            self.rng.random_range(0..4),
            self.rng.random(),
        )
    }

    fn port(&mut self) -> u16 {
        const EDGES: [u16; 8] = [0, 1, 22, 80, 443, 1024, 65534, 65535];
        if self.chance(0.5) { EDGES[self.rng.random_range(0..EDGES.len())] } else { self.rng.random() }
    }

    fn rule(&mut self) -> Rule {
        let direction = if self.chance(0.5) { Direction::Ingress } else { Direction::Egress };
        let v6 = self.chance(0.4);
        let (ethertype, cidr): (EtherType, IpNet) = if v6 {
            let len = if self.chance(0.1) { 0 } else { self.rng.random_range(64..=128) };
            (EtherType::IPv6, Ipv6Net::new(self.v6_addr(), len).unwrap().trunc().into())
        } else {
            let len = if self.chance(0.1) { 0 } else { self.rng.random_range(8..=32) };
            (EtherType::IPv4, Ipv4Net::new(self.v4_addr(), len).unwrap().trunc().into())
        };
        let protocol = match self.rng.random_range(0..7) {
            0 => Protocol::Any,
            1 | 2 => Protocol::Tcp,
            3 => Protocol::Udp,
            4 => {
                if v6 {
                    Protocol::Icmpv6
                } else {
                    Protocol::Icmp
                }
            }
            5 => Protocol::Number(47),
            _ => Protocol::Number(132),
        };
        let mut rule = Rule::new(direction, ethertype, protocol, cidr);
        if protocol.has_ports() && self.chance(0.8) {
            let (a, b) = (self.port().max(1), self.port().max(1));
            rule.ports = Some(if self.chance(0.4) {
                PortRange::single(a)
            } else {
                PortRange { min: a.min(b), max: a.max(b) }
            });
        }
        if protocol.is_icmp() && self.chance(0.5) {
            rule.icmp_type = Some(if self.chance(0.5) { 8 } else { self.rng.random() });
            if self.chance(0.5) {
                rule.icmp_code = Some(self.rng.random_range(0..3));
            }
        }
        rule
    }

    /// An address at an edge of some rule's CIDR, or anywhere.
    fn addr_near(&mut self, rules: &[Rule], v6: bool) -> IpAddr {
        let nets: Vec<IpNet> = rules.iter().map(|r| r.cidr).filter(|c| c.addr().is_ipv6() == v6).collect();
        if !nets.is_empty() && self.chance(0.7) {
            let net = nets[self.rng.random_range(0..nets.len())];
            match self.rng.random_range(0..4) {
                0 => net.network(),
                1 => net.broadcast(),
                2 => step(net.network(), -1),
                _ => step(net.broadcast(), 1),
            }
        } else if v6 {
            self.v6_addr().into()
        } else {
            self.v4_addr().into()
        }
    }

    fn port_near(&mut self, rules: &[Rule]) -> u16 {
        let ranges: Vec<PortRange> = rules.iter().filter_map(|r| r.ports).collect();
        if !ranges.is_empty() && self.chance(0.7) {
            let r = ranges[self.rng.random_range(0..ranges.len())];
            match self.rng.random_range(0..4) {
                0 => r.min,
                1 => r.max,
                2 => r.min.wrapping_sub(1),
                _ => r.max.wrapping_add(1),
            }
        } else {
            self.port()
        }
    }

    /// A raw frame: VLAN tags, IPv4 options, IPv6 extension chains, fragments, bad
    /// versions and lengths, truncation.
    fn frame(&mut self, rules: &[Rule]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        let tags = *[0, 0, 0, 0, 1, 2, 3].get(self.rng.random_range(0..7)).unwrap();
        let kind = self.rng.random_range(0..100);
        let ether_type: u16 = match kind {
            0..=2 => 0x0806,
            3..=5 => self.rng.random(),
            6..=52 => 0x0800,
            _ => 0x86dd,
        };
        for i in 0..tags {
            let tpid: u16 = if i == 0 && tags > 1 { 0x88a8 } else { 0x8100 };
            f.extend(tpid.to_be_bytes());
            f.extend([0, self.rng.random_range(1..100)]);
        }
        f.extend(ether_type.to_be_bytes());
        let v6 = ether_type == 0x86dd;
        let protocol: u8 = match self.rng.random_range(0..10) {
            0..=3 => 6,
            4..=5 => 17,
            6 => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            7 => 47,
            8 => 132,
            _ => self.rng.random(),
        };
        let src = self.addr_near(rules, v6);
        let dst = self.addr_near(rules, v6);
        let mut l4 = Vec::new();
        match protocol {
            6 => {
                l4.extend(self.port().to_be_bytes());
                l4.extend(self.port_near(rules).to_be_bytes());
                l4.extend([0; 8]);
                let doff: u8 = if self.chance(0.95) { 5 } else { self.rng.random_range(0..16) };
                l4.extend([doff << 4, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            }
            17 => {
                l4.extend(self.port().to_be_bytes());
                l4.extend(self.port_near(rules).to_be_bytes());
                l4.extend([0, 8, 0, 0]);
            }
            1 | 58 => {
                let t: u8 = if self.chance(0.5) {
                    *[0u8, 8, 128, 129, 133, 134, 135, 137].get(self.rng.random_range(0..8)).unwrap()
                } else {
                    self.rng.random()
                };
                l4.extend([t, self.rng.random_range(0..3), 0, 0, 0, 1, 0, 1]);
            }
            _ => {}
        }
        let payload_len = self.rng.random_range(0..16);
        l4.extend((0..payload_len).map(|_| self.rng.random::<u8>()));
        if ether_type == 0x0800 {
            let opt_words = if self.chance(0.9) { 0 } else { self.rng.random_range(0..11) };
            let ihl: u8 = if self.chance(0.98) { 5 + opt_words } else { self.rng.random_range(0..16) };
            let ver: u8 = if self.chance(0.98) { 4 } else { self.rng.random_range(0..16) };
            let hdr_len = 20 + usize::from(opt_words) * 4;
            let total =
                if self.chance(0.97) { (hdr_len + l4.len()) as u16 } else { self.rng.random_range(0..40) };
            let frag: u16 = match self.rng.random_range(0..10) {
                0 => 0x2000,                           // MF, first fragment
                1 => self.rng.random_range(1..0x1fff), // non-first
                _ => 0x4000,                           // DF
            };
            f.push(ver << 4 | (ihl & 0x0f));
            f.push(0);
            f.extend(total.to_be_bytes());
            f.extend([0, 1]);
            f.extend(frag.to_be_bytes());
            f.extend([64, protocol, 0, 0]);
            let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else { unreachable!() };
            f.extend(s.octets());
            f.extend(d.octets());
            f.extend(std::iter::repeat_n(1u8, usize::from(opt_words) * 4));
            f.extend(&l4);
        } else if v6 {
            // Extension chain: 0 headers mostly, sometimes up to 8.
            let n_ext = if self.chance(0.7) { 0 } else { self.rng.random_range(0..9) };
            let exts: Vec<u8> = (0..n_ext)
                .map(|_| *[0u8, 43, 60, 44, 51].get(self.rng.random_range(0..5)).unwrap())
                .collect();
            let mut chain = Vec::new();
            for (i, &t) in exts.iter().enumerate() {
                let next = exts.get(i + 1).copied().unwrap_or(protocol);
                match t {
                    44 => {
                        let off: u16 = if self.chance(0.7) { 0 } else { self.rng.random_range(1..0x1fff) };
                        chain.extend([next, 0]);
                        chain.extend((off << 3 | u16::from(self.chance(0.5))).to_be_bytes());
                        chain.extend([0, 0, 0, 1]);
                    }
                    51 => {
                        let len: u8 = self.rng.random_range(1..4);
                        chain.extend([next, len]);
                        chain.extend(std::iter::repeat_n(0u8, (usize::from(len) + 2) * 4 - 2));
                    }
                    _ => {
                        let len: u8 = self.rng.random_range(0..3);
                        chain.extend([next, len]);
                        chain.extend(std::iter::repeat_n(0u8, (usize::from(len) + 1) * 8 - 2));
                    }
                }
            }
            let ver: u8 = if self.chance(0.98) { 6 } else { self.rng.random_range(0..16) };
            f.extend([ver << 4, 0, 0, 0]);
            f.extend(((chain.len() + l4.len()) as u16).to_be_bytes());
            f.extend([exts.first().copied().unwrap_or(protocol), 64]);
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else { unreachable!() };
            f.extend(s.octets());
            f.extend(d.octets());
            f.extend(chain);
            f.extend(&l4);
        } else {
            f.extend((0..28).map(|_| self.rng.random::<u8>()));
        }
        if self.chance(0.1) {
            let cut = self.rng.random_range(14..=f.len());
            f.truncate(cut);
        }
        f
    }
}

fn step(addr: IpAddr, by: i128) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from((u32::from(a) as i128 + by).rem_euclid(1 << 32) as u32)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from((u128::from(a) as i128).wrapping_add(by) as u128)),
    }
}

#[test]
fn differential_random_rules_and_frames() {
    sg_tests::require_root!();
    let seed: u64 = match std::env::var("SG_DIFF_SEED").as_deref() {
        Ok("random") => rand::random(),
        Ok(s) => s.parse().expect("SG_DIFF_SEED: a number or `random`"),
        Err(_) => 0x5eed_2026,
    };
    let total: usize = std::env::var("SG_DIFF_PACKETS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    eprintln!("differential test: seed {seed}, {total} runs (SG_DIFF_SEED / SG_DIFF_PACKETS to change)");
    let mut g = Gen { rng: StdRng::seed_from_u64(seed) };
    let mut twin = Twin::new();
    let mut runs = 0;
    let mut refused = 0;
    let mut by_reason = std::collections::BTreeMap::<Reason, usize>::new();
    // Rule sets that put entries in each classification map (exact port / port trie /
    // exact CIDR / CIDR trie): every lookup path must be compared, not just the usual.
    let mut map_used = [0usize; 4];
    while runs < total {
        let n = if g.chance(0.1) { g.rng.random_range(50..300) } else { g.rng.random_range(0..16) };
        let mut rules: Vec<Rule> = Vec::new();
        for _ in 0..n {
            let r = g.rule();
            if r.validate().is_ok() && !rules.contains(&r) {
                rules.push(r);
            }
        }
        let compiled = sg_daemon::compile::compile(1, &rules);
        for (used, len) in map_used.iter_mut().zip([
            compiled.port_exact.len(),
            compiled.port_classes.len(),
            compiled.cidr_exact.len(),
            compiled.cidrs.len(),
        ]) {
            *used += usize::from(len > 0);
        }
        twin.set_rules(&rules);
        for _ in 0..500 {
            let f = g.frame(&rules);
            for d in [Direction::Ingress, Direction::Egress] {
                match twin.try_check(d, &f) {
                    Some(reason) => *by_reason.entry(reason).or_default() += 1,
                    None => refused += 1,
                }
                runs += 1;
            }
        }
    }
    eprintln!("verdicts by reason: {by_reason:?}; TC inputs the kernel refused: {refused}");
    eprintln!("rule sets using PORT_CLASS_EXACT / PORT_CLASS / CIDR_ALLOW_EXACT / CIDR_ALLOW: {map_used:?}");
    assert!(map_used.iter().all(|&n| n > 0), "a classification map was never used: {map_used:?}");
    assert!(refused * 20 < runs, "too many refused inputs: {refused} of {runs}");
    // The generator must exercise every outcome, or the comparison proves little
    // (related ICMP errors and revocations need flows: tests/tests/conntrack.rs; geo
    // blocks a database: tests/tests/geo.rs).
    for reason in Reason::ALL
        .into_iter()
        .filter(|r| !matches!(r, Reason::AllowRelated | Reason::DropRevoked | Reason::DropGeo))
    {
        assert!(by_reason.get(&reason).copied().unwrap_or(0) > 0, "no frame ended as {reason:?}");
    }
}

/// Non-first fragments carry no ports: they follow their first fragment, and never pass
/// on their own (openshift/ingress-node-firewall #730).
#[test]
fn fragments_follow_their_first_fragment() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    t.set_rules(&default_rules(Os::Linux));
    // IPv4 TCP to port `dport`, identification `id`, fragment offset `off` (8-byte units), MF.
    let v4 = |id: u16, off: u16, mf: bool, dport: u16| {
        let mut f =
            frame(v4("198.51.100.7"), v4("10.0.0.2"), L4::Tcp { sport: 4000, dport, flags: 0x02 }, &[0; 16]);
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[20..22].copy_from_slice(&(off | if mf { 0x2000 } else { 0 }).to_be_bytes());
        if off != 0 {
            f.truncate(14 + 20 + 8); // a later fragment: payload only
        }
        f
    };
    use Direction::Ingress;
    // A lone non-first fragment: dropped.
    assert_eq!(t.check(Ingress, &v4(7, 3, false, 22)), Reason::DropFragment);
    // First fragment to an open port, then the rest: allowed.
    assert_eq!(t.check(Ingress, &v4(8, 0, true, 22)), Reason::AllowRule);
    assert_eq!(t.check(Ingress, &v4(8, 3, true, 22)), Reason::AllowFragment);
    assert_eq!(t.check(Ingress, &v4(8, 6, false, 22)), Reason::AllowFragment);
    // First fragment to a closed port: the rest is dropped with it.
    assert_eq!(t.check(Ingress, &v4(9, 0, true, 80)), Reason::DropNoRule);
    assert_eq!(t.check(Ingress, &v4(9, 3, false, 80)), Reason::DropFragment);
    // Another identification does not ride on an allowed one.
    assert_eq!(t.check(Ingress, &v4(10, 3, false, 22)), Reason::DropFragment);
}
