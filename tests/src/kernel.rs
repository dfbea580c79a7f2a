//! Fixture for verdict tests: the real kernel programs, loaded into a private pin
//! directory, run on frames with `BPF_PROG_TEST_RUN`, with the verdict *reason* read
//! back from the per-CPU counters so it can be compared with the reference model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
use sg_common::abi::Reason;
use sg_common::abi::{GeoConfig, IFACE_FLAG_AUDIT, IFACE_FLAG_GEO_BLOCK};
use sg_common::conntrack::{GeoModel, Tracker};
use sg_common::model::{Direction, Rule};
use sg_daemon::apply::{replace_policy, replace_rules};
use sg_daemon::dataplane::{Capacity, Dataplane};
use sg_daemon::testrun::{TEST_RUN_IFINDEX, TestRunner};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private data plane under `/sys/fs/bpf/sg-test-<pid>-<n>`, removed on drop.
pub struct KernelFixture {
    dir: PathBuf,
    /// The data plane, for direct map access.
    pub dp: Dataplane,
    runner: TestRunner,
    policy_id: u32,
}

impl KernelFixture {
    /// Loads the programs into a fresh pin directory.
    pub fn new() -> Result<Self> {
        Self::with_capacity(Capacity::default())
    }

    /// Like [`KernelFixture::new`] with chosen map sizes.
    pub fn with_capacity(capacity: Capacity) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/sys/fs/bpf/sg-test-{}-{n}", std::process::id()));
        Dataplane::uninstall(&dir)?;
        let dp = Dataplane::open(&dir, capacity)?;
        let runner = TestRunner::open(&dir)?;
        Ok(KernelFixture { dir, dp, runner, policy_id: 0 })
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Binds the test-run interface (loopback) to `rules`.
    pub fn set_rules(&mut self, rules: &[Rule]) -> Result<()> {
        self.policy_id = replace_rules(&mut self.dp, TEST_RUN_IFINDEX, rules)?;
        Ok(())
    }

    /// The policy id the test-run interface is bound to.
    pub fn policy_id(&self) -> u32 {
        self.policy_id
    }

    /// Removes the binding: the interface is unmanaged.
    pub fn unmanage(&mut self) -> Result<()> {
        self.dp.unbind(TEST_RUN_IFINDEX)
    }

    /// Runs one frame; returns whether it passed and the reason the kernel counted
    /// (`None` when nothing was counted: the interface is unmanaged).
    pub fn verdict(&self, direction: Direction, frame: &[u8]) -> Result<(bool, Option<Reason>)> {
        let before = self.dp.verdict_counts()?;
        let run = self.runner.run(direction, frame, 1)?;
        let after = self.dp.verdict_counts()?;
        let counted: Vec<Reason> = after
            .iter()
            .filter(|(r, n)| before.get(r).copied().unwrap_or(0) < **n)
            .map(|(r, _)| *r)
            .collect();
        anyhow::ensure!(counted.len() <= 1, "one packet counted under several reasons: {counted:?}");
        Ok((run.pass, counted.first().copied()))
    }

    /// The test-run handle of the pinned programs.
    pub fn runner(&self) -> &TestRunner {
        &self.runner
    }

    /// Packets per verdict reason so far.
    pub fn counts(&self) -> Result<BTreeMap<Reason, u64>> {
        self.dp.verdict_counts()
    }
}

pub use sg_daemon::flows::monotonic_ns;

impl Drop for KernelFixture {
    fn drop(&mut self) {
        let _ = Dataplane::uninstall(&self.dir);
    }
}

/// The kernel under test and its reference twin, fed the same frames.
pub struct Twin {
    /// The kernel side.
    pub fx: KernelFixture,
    /// The reference side.
    pub model: Tracker,
    rules: Vec<Rule>,
    geo: Option<GeoModel>,
    audit: bool,
}

impl Twin {
    /// A fresh kernel fixture and an empty reference tracker.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self::with_fixture(KernelFixture::new().unwrap())
    }

    /// A twin around a prepared fixture.
    pub fn with_fixture(fx: KernelFixture) -> Self {
        Twin { fx, model: Tracker::default(), rules: Vec::new(), geo: None, audit: false }
    }

    /// Installs `rules` on both sides.
    pub fn set_rules(&mut self, rules: &[Rule]) {
        self.fx.set_rules(rules).unwrap();
        self.rules = rules.to_vec();
        self.geo = None;
        self.audit = false;
    }

    /// Installs rules, a geo block (its networks loaded as the kernel's prefix set) and
    /// audit mode on both sides.
    pub fn set_policy(&mut self, rules: &[Rule], geo: Option<GeoModel>, audit: bool) {
        let dp = &mut self.fx.dp;
        let mut flags = if audit { IFACE_FLAG_AUDIT } else { 0 };
        let mut exempt = Vec::new();
        if let Some(g) = &geo {
            let mut prefixes = sg_geo::CountryPrefixes::default();
            for n in &g.blocked {
                match n {
                    ipnet::IpNet::V4(v4) => prefixes.v4.push(*v4),
                    ipnet::IpNet::V6(v6) => prefixes.v6.push(*v6),
                }
            }
            let set_id = if dp.geo_config().unwrap().set_id == 1 { 2 } else { 1 };
            dp.write_geo_set(set_id, &prefixes).unwrap();
            let mut cfg = GeoConfig {
                set_id,
                protocol: g.protocol,
                n_ranges: g.ports.len() as u8,
                ..Default::default()
            };
            for (slot, r) in cfg.ranges.iter_mut().zip(&g.ports) {
                *slot = [r.min, r.max];
            }
            dp.set_geo_config(&cfg).unwrap();
            dp.delete_geo_sets_except(set_id).unwrap();
            flags |= IFACE_FLAG_GEO_BLOCK;
            exempt = g.exempt.clone();
        }
        self.fx.policy_id = replace_policy(dp, TEST_RUN_IFINDEX, rules, &exempt, flags).unwrap();
        self.rules = rules.to_vec();
        self.geo = geo;
        self.audit = audit;
    }

    /// Asserts kernel == reference for `frame`; returns the reason.
    pub fn check(&mut self, direction: Direction, frame: &[u8]) -> Reason {
        self.try_check(direction, frame).unwrap_or_else(|| panic!("kernel refused test input {frame:02x?}"))
    }

    /// Like [`Twin::check`], but `None` when the kernel refuses to build an skb from the
    /// frame: BPF_PROG_TEST_RUN for TC rejects (EINVAL) some truncated L3 headers,
    /// which the stack would also have dropped before the TC egress hook.
    pub fn try_check(&mut self, direction: Direction, frame: &[u8]) -> Option<Reason> {
        let (pass, got) = match self.fx.verdict(direction, frame) {
            Ok(v) => v,
            Err(e) if direction == Direction::Ingress && format!("{e:#}").contains("Invalid argument") => {
                return None;
            }
            Err(e) => panic!("test run of {direction} frame {frame:02x?}: {e:#}"),
        };
        let want = self.model.process_with_geo(
            TEST_RUN_IFINDEX,
            self.fx.policy_id(),
            &self.rules,
            self.geo.as_ref(),
            direction,
            frame,
            monotonic_ns(),
        );
        assert_eq!(
            (pass, got),
            (want.is_allow() || self.audit, Some(want)),
            "kernel disagrees with reference\n direction {direction}\n rules {:#?}\n frame {frame:02x?}",
            self.rules
        );
        Some(want)
    }
}

/// Frame builders (etherparse) for tests.
#[allow(missing_docs)]
pub mod frames {
    use etherparse::PacketBuilder;
    use std::net::IpAddr;

    pub const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    pub const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    /// Transport of a test frame.
    #[derive(Clone, Copy, Debug)]
    pub enum L4 {
        Tcp { sport: u16, dport: u16, flags: u8 },
        Udp { sport: u16, dport: u16 },
        Icmp { kind: u8, code: u8, id: u16 },
        Other { protocol: u8 },
    }

    pub fn frame(src: IpAddr, dst: IpAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed address families"),
        };
        let mut out = Vec::new();
        match l4 {
            L4::Tcp { sport, dport, flags } => {
                let mut b = ip.tcp(sport, dport, 1000, 65535);
                if flags & 0x02 != 0 {
                    b = b.syn();
                }
                if flags & 0x10 != 0 {
                    b = b.ack(1);
                }
                if flags & 0x01 != 0 {
                    b = b.fin();
                }
                if flags & 0x04 != 0 {
                    b = b.rst();
                }
                b.write(&mut out, payload).unwrap();
            }
            L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, payload).unwrap(),
            L4::Icmp { kind, code, id } => {
                let v6 = src.is_ipv6();
                if v6 {
                    let t = etherparse::Icmpv6Type::Unknown {
                        type_u8: kind,
                        code_u8: code,
                        bytes5to8: [(id >> 8) as u8, id as u8, 0, 1],
                    };
                    ip.icmpv6(t).write(&mut out, payload).unwrap();
                } else {
                    let t = etherparse::Icmpv4Type::Unknown {
                        type_u8: kind,
                        code_u8: code,
                        bytes5to8: [(id >> 8) as u8, id as u8, 0, 1],
                    };
                    ip.icmpv4(t).write(&mut out, payload).unwrap();
                }
            }
            L4::Other { protocol } => {
                ip.write(&mut out, etherparse::IpNumber(protocol), payload).unwrap();
            }
        }
        out
    }
}
