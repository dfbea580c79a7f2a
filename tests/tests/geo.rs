//! Geo-blocking and audit mode in the kernel, through BPF_PROG_TEST_RUN, against the
//! reference (`sg_common::conntrack::GeoModel`).

use std::net::IpAddr;

use sg_common::abi::{Reason, TCP_ACK, TCP_SYN};
use sg_common::conntrack::GeoModel;
use sg_common::model::{Direction, Os, PortRange, default_rules};
use sg_tests::kernel::Twin;
use sg_tests::kernel::frames::{L4, frame};

use Direction::{Egress, Ingress};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn syn_from(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    frame(ip(src), ip(dst), L4::Tcp { sport: 40000, dport, flags: TCP_SYN }, b"")
}

fn geo() -> GeoModel {
    GeoModel {
        protocol: 6,
        ports: vec![PortRange::single(9833)],
        blocked: vec!["203.0.113.0/24".parse().unwrap(), "2001:db8:bad::/48".parse().unwrap()],
        exempt: vec!["203.0.113.77/32".parse().unwrap()],
    }
}

#[test]
fn blocked_countries_lose_the_remote_desktop_port_only() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    let mut rules = default_rules(Os::Windows);
    // Open 9833 over IPv6 too, so the v6 block is what drops it.
    rules.push(
        sg_common::model::Rule::new(
            Ingress,
            sg_common::model::EtherType::IPv6,
            sg_common::model::Protocol::Tcp,
            "::/0".parse().unwrap(),
        )
        .with_ports(PortRange::single(9833)),
    );
    t.set_policy(&rules, Some(geo()), false);
    let inst = "10.0.0.2";
    assert_eq!(t.check(Ingress, &syn_from("203.0.113.5", inst, 9833)), Reason::DropGeo);
    assert_eq!(t.check(Ingress, &syn_from("198.51.100.5", inst, 9833)), Reason::AllowRule);
    // Other ports are unaffected; the exempted source gets in.
    assert_eq!(t.check(Ingress, &syn_from("203.0.113.5", inst, 22)), Reason::AllowRule);
    assert_eq!(t.check(Ingress, &syn_from("203.0.113.5", inst, 443)), Reason::AllowRule);
    assert_eq!(t.check(Ingress, &syn_from("203.0.113.77", inst, 9833)), Reason::AllowRule);
    // IPv6.
    assert_eq!(t.check(Ingress, &syn_from("2001:db8:bad::1", "fd00::2", 9833)), Reason::DropGeo);
    assert_eq!(t.check(Ingress, &syn_from("2001:db8:900d::1", "fd00::2", 9833)), Reason::AllowRule);
    // Egress is never geo-blocked.
    assert_eq!(t.check(Egress, &syn_from(inst, "203.0.113.5", 9833)), Reason::AllowRule);
}

#[test]
fn geo_block_wins_over_a_tracked_flow() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    let rules = default_rules(Os::Windows);
    t.set_policy(&rules, None, false);
    let inst = "10.0.0.2";
    let seg = |flags| frame(ip("203.0.113.5"), ip(inst), L4::Tcp { sport: 40000, dport: 9833, flags }, b"");
    let back = |flags| frame(ip(inst), ip("203.0.113.5"), L4::Tcp { sport: 9833, dport: 40000, flags }, b"");
    assert_eq!(t.check(Ingress, &seg(TCP_SYN)), Reason::AllowRule);
    assert_eq!(t.check(Egress, &back(TCP_SYN | TCP_ACK)), Reason::AllowTracked);
    assert_eq!(t.check(Ingress, &seg(TCP_ACK)), Reason::AllowTracked);
    // The database now lists the source's network: the next packet is dropped.
    t.set_policy(&rules, Some(geo()), false);
    assert_eq!(t.check(Ingress, &seg(TCP_ACK)), Reason::DropGeo);
}

#[test]
fn audit_mode_counts_but_drops_nothing() {
    sg_tests::require_root!();
    let mut t = Twin::new();
    t.set_policy(&default_rules(Os::Linux), Some(geo()), true);
    let inst = "10.0.0.2";
    let before = t.fx.counts().unwrap();
    // Would be dropped (no rule, geo): counted as such, passed.
    assert_eq!(t.check(Ingress, &syn_from("198.51.100.5", inst, 80)), Reason::DropNoRule);
    assert_eq!(t.check(Ingress, &syn_from("203.0.113.5", inst, 9833)), Reason::DropGeo);
    let after = t.fx.counts().unwrap();
    assert_eq!(after[&Reason::DropNoRule] - before[&Reason::DropNoRule], 1);
    assert_eq!(after[&Reason::DropGeo] - before[&Reason::DropGeo], 1);
    // Per-interface counters saw the same.
    let iface = t.fx.dp.iface_counts(sg_daemon::testrun::TEST_RUN_IFINDEX).unwrap();
    assert_eq!(iface[&Reason::DropGeo], 1);
    assert_eq!(iface[&Reason::DropNoRule], 1);
}
