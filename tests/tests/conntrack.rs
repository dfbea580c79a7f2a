//! Connection tracking in the kernel, through BPF_PROG_TEST_RUN, against the reference
//! tracker (`sg_common::conntrack`): scripted scenarios, a seeded random sequence test
//! with rule changes, timeouts, and the flood test (established flows survive a flood
//! of spoofed new flows).

use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sg_common::abi::{CtTimeouts, Reason, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use sg_common::model::{Direction, EtherType, Os, PortRange, Protocol, Rule, default_rules};
use sg_daemon::dataplane::Capacity;
use sg_tests::kernel::frames::{L4, frame};
use sg_tests::kernel::{KernelFixture, Twin};

use Direction::{Egress, Ingress};

const INST: &str = "10.0.0.2";
const REMOTE: &str = "198.51.100.9";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP segment of the flow instance:iport <-> remote:rport, in `dir`.
fn tcp(dir: Direction, iport: u16, rport: u16, flags: u8) -> Vec<u8> {
    tcp_at(dir, ip(INST), ip(REMOTE), iport, rport, flags)
}

fn tcp_at(dir: Direction, inst: IpAddr, remote: IpAddr, iport: u16, rport: u16, flags: u8) -> Vec<u8> {
    match dir {
        Egress => frame(inst, remote, L4::Tcp { sport: iport, dport: rport, flags }, b""),
        Ingress => frame(remote, inst, L4::Tcp { sport: rport, dport: iport, flags }, b""),
    }
}

fn udp(dir: Direction, iport: u16, rport: u16) -> Vec<u8> {
    match dir {
        Egress => frame(ip(INST), ip(REMOTE), L4::Udp { sport: iport, dport: rport }, b"q"),
        Ingress => frame(ip(REMOTE), ip(INST), L4::Udp { sport: rport, dport: iport }, b"a"),
    }
}

fn icmp(dir: Direction, kind: u8, code: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    match dir {
        Egress => frame(ip(INST), ip(REMOTE), L4::Icmp { kind, code, id }, payload),
        Ingress => frame(ip(REMOTE), ip(INST), L4::Icmp { kind, code, id }, payload),
    }
}

/// The IP header + first 8 transport bytes of a packet, as an ICMP error quotes it.
fn quoted(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    ip[..ihl + 8].to_vec()
}

#[test]
fn outbound_tcp_replies_ride_inbound_syn_does_not() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    t.set_rules(&default_rules(Os::Linux));
    assert_eq!(t.check(Egress, &tcp(Egress, 40000, 80, TCP_SYN)), Reason::AllowRule);
    // A bare ACK is not explained by a SYN.
    assert_eq!(t.check(Ingress, &tcp(Ingress, 40000, 80, TCP_ACK)), Reason::DropNoRule);
    assert_eq!(t.check(Ingress, &tcp(Ingress, 40000, 80, TCP_SYN | TCP_ACK)), Reason::AllowTracked);
    assert_eq!(t.check(Egress, &tcp(Egress, 40000, 80, TCP_ACK)), Reason::AllowTracked);
    assert_eq!(t.check(Ingress, &tcp(Ingress, 40000, 80, TCP_ACK)), Reason::AllowTracked);
    // The remote cannot open a connection to the instance's port 80, nor ride the flow
    // with a SYN of its own.
    assert_eq!(t.check(Ingress, &tcp(Ingress, 80, 5555, TCP_SYN)), Reason::DropNoRule);
    assert_eq!(t.check(Ingress, &tcp(Ingress, 40000, 80, TCP_SYN)), Reason::DropNoRule);
    // Close: FIN then the last ACK still pass; RST closes.
    assert_eq!(t.check(Egress, &tcp(Egress, 40000, 80, TCP_FIN | TCP_ACK)), Reason::AllowTracked);
    assert_eq!(t.check(Ingress, &tcp(Ingress, 40000, 80, TCP_FIN | TCP_ACK)), Reason::AllowTracked);
    assert_eq!(t.check(Ingress, &tcp(Ingress, 40000, 80, TCP_RST)), Reason::AllowTracked);
    assert_eq!(t.check(Ingress, &tcp(Ingress, 40000, 80, TCP_ACK)), Reason::DropNoRule);
}

#[test]
fn udp_and_echo_replies_and_no_request_riding() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    t.set_rules(&default_rules(Os::Linux));
    assert_eq!(t.check(Ingress, &udp(Ingress, 5353, 53)), Reason::DropNoRule);
    assert_eq!(t.check(Egress, &udp(Egress, 5353, 53)), Reason::AllowRule);
    assert_eq!(t.check(Ingress, &udp(Ingress, 5353, 53)), Reason::AllowTracked);
    assert_eq!(t.check(Ingress, &udp(Ingress, 5354, 53)), Reason::DropNoRule);
    // Echo: the instance pings out; the reply rides, an unsolicited reply does not.
    let mut t = Twin::new();
    let mut rules = default_rules(Os::Linux);
    rules.retain(|r| r.protocol != Protocol::Icmp); // no ingress ICMP rule
    t.set_rules(&rules);
    assert_eq!(t.check(Ingress, &icmp(Ingress, 0, 0, 77, b"")), Reason::DropNoRule);
    assert_eq!(t.check(Egress, &icmp(Egress, 8, 0, 77, b"")), Reason::AllowRule);
    assert_eq!(t.check(Ingress, &icmp(Ingress, 0, 0, 77, b"")), Reason::AllowTracked);
    assert_eq!(t.check(Ingress, &icmp(Ingress, 0, 0, 78, b"")), Reason::DropNoRule);
    // GHSA-c66w-hq56-4q97: an echo *request* never rides the entry.
    assert_eq!(t.check(Ingress, &icmp(Ingress, 8, 0, 77, b"")), Reason::DropNoRule);
}

#[test]
fn icmp_errors_of_tracked_flows_reach_their_endpoint() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    let mut rules = default_rules(Os::Linux);
    rules.retain(|r| r.protocol != Protocol::Icmp);
    t.set_rules(&rules);
    let syn = tcp(Egress, 40001, 443, TCP_SYN);
    assert_eq!(t.check(Egress, &syn), Reason::AllowRule);
    // Fragmentation needed (3/4) quoting the instance's segment: allowed.
    assert_eq!(t.check(Ingress, &icmp(Ingress, 3, 4, 0, &quoted(&syn))), Reason::AllowRelated);
    // Time exceeded quoting it: allowed. Quoting an unknown flow: dropped.
    assert_eq!(t.check(Ingress, &icmp(Ingress, 11, 0, 0, &quoted(&syn))), Reason::AllowRelated);
    let other = tcp(Egress, 40002, 443, TCP_SYN);
    assert_eq!(t.check(Ingress, &icmp(Ingress, 3, 4, 0, &quoted(&other))), Reason::DropNoRule);
    // IPv6 packet too big quoting a tracked v6 flow.
    let (i6, r6) = (ip("fd00::2"), ip("2001:db8::9"));
    let syn6 = tcp_at(Egress, i6, r6, 40003, 443, TCP_SYN);
    assert_eq!(t.check(Egress, &syn6), Reason::AllowRule);
    let mut q6 = syn6[14..14 + 40 + 8].to_vec();
    q6.truncate(48);
    let ptb = frame(r6, i6, L4::Icmp { kind: 2, code: 0, id: 0 }, &q6);
    assert_eq!(t.check(Ingress, &ptb), Reason::AllowRelated);
}

#[test]
fn removing_the_rule_cuts_established_flows_keeping_it_does_not() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    let rules = default_rules(Os::Linux);
    t.set_rules(&rules);
    for (d, f) in [(Ingress, TCP_SYN), (Egress, TCP_SYN | TCP_ACK), (Ingress, TCP_ACK)] {
        assert!(t.check(d, &tcp(d, 22, 5000, f)).is_allow());
    }
    // A rule change that still allows the flow: it goes on.
    let mut more = rules.clone();
    more.push(Rule::new(Ingress, EtherType::IPv4, Protocol::Udp, "0.0.0.0/0".parse().unwrap()));
    t.set_rules(&more);
    assert_eq!(t.check(Egress, &tcp(Egress, 22, 5000, TCP_ACK)), Reason::AllowTracked);
    // The ssh rule goes: the next packet, in either direction, is cut.
    let narrowed: Vec<Rule> =
        rules.iter().filter(|r| r.ports != Some(PortRange::single(22))).cloned().collect();
    t.set_rules(&narrowed);
    assert_eq!(t.check(Egress, &tcp(Egress, 22, 5000, TCP_ACK)), Reason::AllowRule); // egress any still allows
    assert_eq!(t.check(Ingress, &tcp(Ingress, 22, 5000, TCP_ACK)), Reason::DropNoRule);
    // A fresh flow, then revocation seen first on the ingress side.
    t.set_rules(&rules);
    for (d, f) in [(Ingress, TCP_SYN), (Egress, TCP_SYN | TCP_ACK), (Ingress, TCP_ACK)] {
        assert!(t.check(d, &tcp(d, 22, 5001, f)).is_allow());
    }
    t.set_rules(&narrowed);
    assert_eq!(t.check(Ingress, &tcp(Ingress, 22, 5001, TCP_ACK)), Reason::DropRevoked);
}

#[test]
fn timeouts_are_configurable_and_expired_entries_are_absent() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    let timeouts = CtTimeouts { udp: 1, ..CtTimeouts::DEFAULT };
    t.fx.dp.set_timeouts(&timeouts).unwrap();
    t.model.timeouts = timeouts;
    t.set_rules(&default_rules(Os::Linux));
    assert_eq!(t.check(Egress, &udp(Egress, 6000, 53)), Reason::AllowRule);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(t.check(Ingress, &udp(Ingress, 6000, 53)), Reason::DropNoRule);
    assert_eq!(t.fx.dp.timeouts().unwrap().udp, 1);
}

/// Random sequences over a small tuple space (so packets hit each other's flows),
/// with rule-set changes, ICMP errors quoting earlier packets, and every TCP flag mix.
#[test]
fn differential_random_sequences() {
    sg_tests::require_root!();
    let seed: u64 = match std::env::var("SG_DIFF_SEED").as_deref() {
        Ok("random") => rand::random(),
        Ok(s) => s.parse().expect("SG_DIFF_SEED"),
        Err(_) => 0xc0_22_7a_c4,
    };
    let total: usize = std::env::var("SG_CT_PACKETS").ok().and_then(|s| s.parse().ok()).unwrap_or(30_000);
    eprintln!("conntrack sequences: seed {seed}, {total} packets");
    let mut rng = StdRng::seed_from_u64(seed);
    let any4 = "0.0.0.0/0".parse().unwrap();
    let rule_sets: Vec<Vec<Rule>> = vec![
        default_rules(Os::Linux),
        default_rules(Os::Windows),
        vec![
            Rule::new(Ingress, EtherType::IPv4, Protocol::Tcp, any4)
                .with_ports(PortRange { min: 20, max: 25 }),
            Rule::new(Ingress, EtherType::IPv4, Protocol::Udp, "198.51.100.0/24".parse().unwrap()),
            Rule::new(Egress, EtherType::IPv4, Protocol::Tcp, any4).with_ports(PortRange::single(80)),
        ],
        vec![
            Rule::new(Egress, EtherType::IPv4, Protocol::Udp, any4),
            Rule::new(Ingress, EtherType::IPv4, Protocol::Icmp, any4),
        ],
        vec![],
    ];
    let mut t = Twin::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut by_reason = std::collections::BTreeMap::<Reason, usize>::new();
    for n in 0..total {
        if n % 400 == 0 {
            t.set_rules(&rule_sets[rng.random_range(0..rule_sets.len())]);
        }
        let dir = if rng.random_bool(0.5) { Ingress } else { Egress };
        let iport = [22u16, 80, 40000, 40001][rng.random_range(0..4)];
        let rport = [22u16, 53, 80, 5000][rng.random_range(0..4)];
        let remote = ["198.51.100.9", "203.0.113.5"][rng.random_range(0..2)];
        let f = match rng.random_range(0..10) {
            0..=4 => {
                let flags =
                    [TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK, 0]
                        [rng.random_range(0..7)];
                tcp_at(dir, ip(INST), ip(remote), iport, rport, flags)
            }
            5..=6 => match dir {
                Egress => frame(ip(INST), ip(remote), L4::Udp { sport: iport, dport: rport }, b""),
                Ingress => frame(ip(remote), ip(INST), L4::Udp { sport: rport, dport: iport }, b""),
            },
            7 => {
                let kind = [0u8, 8, 13][rng.random_range(0..3)];
                let id = [1u16, 2][rng.random_range(0..2)];
                match dir {
                    Egress => frame(ip(INST), ip(remote), L4::Icmp { kind, code: 0, id }, b""),
                    Ingress => frame(ip(remote), ip(INST), L4::Icmp { kind, code: 0, id }, b""),
                }
            }
            _ if !seen.is_empty() => {
                // An error about an earlier packet, sent back towards its source.
                let earlier = seen[rng.random_range(0..seen.len())].clone();
                let src: [u8; 4] = earlier[26..30].try_into().unwrap();
                let dst: [u8; 4] = earlier[30..34].try_into().unwrap();
                let (kind, code) = [(3u8, 4u8), (11, 0), (3, 3)][rng.random_range(0..3)];
                let back_dir = if IpAddr::from(src) == ip(INST) { Ingress } else { Egress };
                let f = frame(
                    IpAddr::from(dst),
                    IpAddr::from(src),
                    L4::Icmp { kind, code, id: 0 },
                    &quoted(&earlier),
                );
                let r = t.check(back_dir, &f);
                *by_reason.entry(r).or_default() += 1;
                continue;
            }
            _ => continue,
        };
        if f.len() >= 34 && f[12..14] == [8, 0] {
            seen.push(f.clone());
            if seen.len() > 64 {
                seen.remove(0);
            }
        }
        *by_reason.entry(t.check(dir, &f)).or_default() += 1;
    }
    eprintln!("verdicts by reason: {by_reason:?}");
    for r in [
        Reason::AllowRule,
        Reason::AllowTracked,
        Reason::AllowRelated,
        Reason::DropNoRule,
        Reason::DropRevoked,
    ] {
        assert!(by_reason.get(&r).copied().unwrap_or(0) > 0, "sequence never produced {r:?}");
    }
}

/// A flood of new flows from spoofed sources (SYNs to an open port, never completed)
/// must not evict established flows that carry traffic: new flows live in CT_NEW,
/// established ones in CT.
#[test]
fn syn_flood_does_not_evict_established_flows() {
    sg_tests::require_root!();
    let capacity = Capacity { ct_entries: 8192, ct_new_entries: 4096, ..Capacity::default() };
    let mut fx = KernelFixture::with_capacity(capacity).unwrap();
    fx.set_rules(&default_rules(Os::Linux)).unwrap();
    let established = 2000u16;
    let client = |i: u16| IpAddr::from([198, 51, (i >> 8) as u8, i as u8]);
    for i in 0..established {
        for (d, f) in [(Ingress, TCP_SYN), (Egress, TCP_SYN | TCP_ACK), (Ingress, TCP_ACK)] {
            let (pass, _) = fx.verdict(d, &tcp_at(d, ip(INST), client(i), 22, 30000 + i, f)).unwrap();
            assert!(pass);
        }
    }
    // 50,000 spoofed SYNs (12x the new-flow table), with the established flows sending
    // traffic throughout.
    let mut rng = StdRng::seed_from_u64(7);
    let flood = 50_000;
    for n in 0..flood {
        let spoofed = IpAddr::from([100, 64 + (n % 64) as u8, rng.random(), rng.random()]);
        let f = tcp_at(Ingress, ip(INST), spoofed, 22, rng.random_range(1024..65535), TCP_SYN);
        assert!(fx.runner().run(Ingress, &f, 1).unwrap().pass);
        if n % 25 == 0 {
            let i = (n / 25) as u16 % established;
            let f = tcp_at(Egress, ip(INST), client(i), 22, 30000 + i, TCP_ACK);
            assert!(fx.runner().run(Egress, &f, 1).unwrap().pass);
        }
    }
    let mut survived = 0;
    for i in 0..established {
        let (_, reason) =
            fx.verdict(Ingress, &tcp_at(Ingress, ip(INST), client(i), 22, 30000 + i, TCP_ACK)).unwrap();
        survived += usize::from(reason == Some(Reason::AllowTracked));
    }
    let flows = fx.dp.flows().unwrap();
    let unconfirmed = flows.iter().filter(|(_, _, confirmed)| !confirmed).count();
    eprintln!(
        "established flows surviving a {flood}-SYN flood: {survived}/{established}; unconfirmed table holds {unconfirmed}/{}",
        capacity.ct_new_entries
    );
    assert_eq!(survived, usize::from(established), "established flows were evicted by the flood");
    assert!(unconfirmed <= capacity.ct_new_entries as usize);
}
