//! `xtask bench live`: packets per second through a veth pair.
//!
//! Topology, in a private network namespace: `gen` <-> `dut` (veth). The generator is
//! `sg_bench_tx` run with BPF_PROG_TEST_RUN in live-frames mode on `gen` (XDP_TX sends
//! each frame out of `gen`, so it arrives on `dut`). Receivers on `dut`, measured in the
//! same run on the same frames: `sg_bench_drop`, `sg_bench_empty`, sg's XDP program with
//! several rule sets, and `sg_bench_empty` + an nftables netdev ingress chain.
//!
//! The rate is what `dut` received (veth's `rx_queue_*_xdp_packets`) over the time the
//! kernel reports for the generator's send loop (the wall-clock rate is reported too:
//! on a shared VM it also counts time the thread was preempted). The generator thread is
//! pinned to one CPU; veth runs the receiver's NAPI poll in the softirq the generator
//! raises on that same CPU, so the rate is 1 / (cost to send + cost to receive) of one
//! core.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya_obj::programs::XdpAttachType;
use sg_common::abi::{
    CT_TCP_ESTABLISHED, CtEntry, CtKey, DIR_EGRESS, FAMILY_V4, IPPROTO_TCP, MAP_CT, Reason,
};
use sg_common::model::{Direction, Os, default_rules};
use sg_daemon::apply::replace_rules;
use sg_daemon::dataplane::{Capacity, Dataplane};

use crate::classify::group;
use crate::stats::Summary;
use crate::sys::{self, CpuPin, Machine, NetnsGuard, PinDir};
use crate::workload::{self, Family, L4};

#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Frames sent per configuration and run (slow configurations stop earlier, see --max-seconds).
    #[arg(long, default_value_t = 8_388_608)]
    pub packets: u64,
    /// Distinct frames (tuples), sent round-robin.
    #[arg(long, default_value_t = 64)]
    pub frames: usize,
    /// Frames per BPF_PROG_TEST_RUN call (one call repeats one frame).
    #[arg(long, default_value_t = 65_536)]
    pub burst: u32,
    /// Live-frames batch size (frames per xdp_do_flush, at most 256).
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// Rounds over all configurations; results are medians ± half the min-max range.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// CPU the generator thread is pinned to.
    #[arg(long, default_value_t = 1)]
    pub cpu: usize,
    /// Upper bound on the sending time of one configuration.
    #[arg(long, default_value_t = 3.0)]
    pub max_seconds: f64,
    /// Rule counts for sg and nftables.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub rules: Vec<usize>,
    /// Leave out the nftables configurations.
    #[arg(long)]
    pub skip_nft: bool,
    /// Only configurations whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// Write the results into docs/benchmarks.md.
    #[arg(long)]
    pub write_docs: bool,
    /// Only measure the generator's per-call overhead (XDP_DROP receiver) and exit.
    #[arg(long)]
    pub probe: bool,
    /// Keep the nftables rulesets used (`nft -f` files) in this directory.
    #[arg(long)]
    pub nft_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    /// TCP ACKs that a rule allows, of flows sg does not track: every packet goes
    /// through the rules (and opens no flow).
    Allowed,
    /// The same ACKs, of flows sg tracks as established (entries written into `CT`
    /// before the run): decided by conntrack without the rules.
    Established,
    /// TCP SYNs and UDP to ports of existing rules, destinations outside every rule's
    /// network: no rule matches.
    Dropped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Receiver {
    XdpDrop,
    XdpPass,
    SgDefault,
    Sg(usize),
    NftEmpty,
    NftList(usize),
    NftSet(usize),
}

#[derive(Clone, Debug)]
struct Config {
    receiver: Receiver,
    traffic: Traffic,
}

impl Config {
    fn name(&self) -> String {
        let t = match self.traffic {
            Traffic::Allowed => "allowed",
            Traffic::Established => "established",
            Traffic::Dropped => "dropped",
        };
        match &self.receiver {
            Receiver::XdpDrop => "xdp-drop".into(),
            Receiver::XdpPass => "xdp-pass".into(),
            Receiver::SgDefault => format!("sg-default-{t}"),
            Receiver::Sg(n) => format!("sg-{n}-{t}"),
            Receiver::NftEmpty => "nft-empty-chain".into(),
            Receiver::NftList(n) => format!("nft-list-{n}-{t}"),
            Receiver::NftSet(n) => format!("nft-set-{n}-{t}"),
        }
    }

    fn receiver_label(&self) -> String {
        match &self.receiver {
            Receiver::XdpDrop => "`sg_bench_drop` (XDP_DROP)".into(),
            Receiver::XdpPass => "`sg_bench_empty` (XDP_PASS)".into(),
            Receiver::SgDefault | Receiver::Sg(_) => "sg XDP (`prog_egress`)".into(),
            Receiver::NftEmpty => "`sg_bench_empty` + nft, chain without rules".into(),
            Receiver::NftList(_) => "`sg_bench_empty` + nft rule list".into(),
            Receiver::NftSet(_) => "`sg_bench_empty` + nft interval set".into(),
        }
    }

    fn rules_label(&self) -> String {
        match &self.receiver {
            Receiver::XdpDrop | Receiver::XdpPass => "-".into(),
            Receiver::SgDefault => "default (linux)".into(),
            Receiver::NftEmpty => "0 (policy drop)".into(),
            Receiver::Sg(n) | Receiver::NftList(n) | Receiver::NftSet(n) => group(*n),
        }
    }

    /// Whether frames leave the receiver towards the stack (pass) or are dropped there.
    fn passes(&self) -> bool {
        match &self.receiver {
            Receiver::XdpDrop | Receiver::NftEmpty => false,
            Receiver::XdpPass => true,
            _ => self.traffic != Traffic::Dropped,
        }
    }

    fn verdict_label(&self) -> &'static str {
        match (&self.receiver, self.passes()) {
            (Receiver::XdpDrop, _) => "XDP drop",
            (Receiver::XdpPass, _) => "XDP pass",
            (Receiver::SgDefault | Receiver::Sg(_), true) if self.traffic == Traffic::Established => {
                "XDP pass (conntrack)"
            }
            (Receiver::SgDefault | Receiver::Sg(_), true) => "XDP pass (rule)",
            (Receiver::SgDefault | Receiver::Sg(_), false) => "XDP drop (no rule)",
            (_, true) => "XDP pass, nft accept",
            (_, false) => "XDP pass, nft drop",
        }
    }
}

fn configs(opts: &Opts) -> Vec<Config> {
    use Receiver::*;
    use Traffic::*;
    let mut v = vec![
        Config { receiver: XdpDrop, traffic: Dropped },
        Config { receiver: XdpPass, traffic: Allowed },
        Config { receiver: SgDefault, traffic: Allowed },
    ];
    for &n in &opts.rules {
        v.push(Config { receiver: Sg(n), traffic: Dropped });
        v.push(Config { receiver: Sg(n), traffic: Allowed });
        v.push(Config { receiver: Sg(n), traffic: Established });
    }
    if !opts.skip_nft {
        v.push(Config { receiver: NftEmpty, traffic: Dropped });
        for &n in &opts.rules {
            v.push(Config { receiver: NftSet(n), traffic: Dropped });
            v.push(Config { receiver: NftSet(n), traffic: Allowed });
            v.push(Config { receiver: NftList(n), traffic: Dropped });
        }
    }
    if let Some(only) = &opts.only {
        v.retain(|c| c.name().contains(only.as_str()));
    }
    v
}

/// Frames of a traffic kind. Frame `k` uses rule `j = spread(k, smallest N)` (for
/// allowed traffic the nearest tcp rule, `j` rounded down to even): its protocol and
/// port. Allowed frames go to a host in its network, dropped frames to a host outside
/// every network. The same frames serve every configuration.
fn traffic_frames(opts: &Opts, traffic: Traffic) -> Vec<Vec<u8>> {
    let n = opts.rules.iter().copied().min().unwrap_or(1000);
    (0..opts.frames)
        .map(|k| {
            let j = workload::spread(k, n);
            match traffic {
                Traffic::Allowed | Traffic::Established => {
                    let j = j & !1;
                    workload::frame(
                        Direction::Egress,
                        workload::host_in_rule(Family::V4, j, k),
                        20_000 + k as u16,
                        workload::rule_port(j),
                        L4::Tcp(workload::ACK),
                    )
                }
                Traffic::Dropped => workload::frame(
                    Direction::Egress,
                    workload::host_outside(Family::V4, k),
                    20_000 + k as u16,
                    workload::rule_port(j),
                    L4::for_protocol(workload::rule_protocol(j, true), workload::SYN),
                ),
            }
        })
        .collect()
}

/// Writes an established conntrack entry for every frame (instance-side key, as the
/// kernel builds it for egress packets: instance = source).
fn establish(dp: &mut Dataplane, ifindex: u32, policy_id: u32, frames: &[Vec<u8>]) -> Result<()> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let mut ct: BpfHashMap<&mut MapData, CtKey, CtEntry> =
        BpfHashMap::try_from(dp.ebpf_mut().map_mut(MAP_CT).context("CT map")?)?;
    for f in frames {
        // Ethernet (14) + IPv4 (20) + TCP: ports at 34 and 36.
        let mut addr_inst = [0u8; 16];
        let mut addr_remote = [0u8; 16];
        addr_inst[..4].copy_from_slice(&f[26..30]);
        addr_remote[..4].copy_from_slice(&f[30..34]);
        let key = CtKey {
            ifindex,
            family: FAMILY_V4,
            protocol: IPPROTO_TCP,
            port_inst: u16::from_be_bytes([f[34], f[35]]),
            port_remote: u16::from_be_bytes([f[36], f[37]]),
            _pad: 0,
            addr_inst,
            addr_remote,
        };
        let entry = CtEntry {
            last_seen_ns: now,
            created_ns: now,
            policy_id,
            orig_port_key: key.port_remote,
            origin: DIR_EGRESS,
            state: CT_TCP_ESTABLISHED,
        };
        ct.insert(&key, &entry, 0).context("writing a CT entry")?;
    }
    Ok(())
}

fn nft_ruleset(receiver: &Receiver) -> String {
    let mut s = String::from("table netdev sgbench {\n");
    let chain_head = "    type filter hook ingress device \"dut\" priority 0; policy drop;\n";
    match receiver {
        Receiver::NftEmpty => {
            let _ = write!(s, "  chain ingress {{\n{chain_head}  }}\n");
        }
        Receiver::NftList(n) => {
            let _ = write!(s, "  chain ingress {{\n{chain_head}");
            for i in 0..*n {
                let proto = workload::rule_protocol(i, true);
                let _ = writeln!(
                    s,
                    "    ip daddr {} {proto} dport {} accept",
                    workload::rule_net(Family::V4, i),
                    workload::rule_port(i)
                );
            }
            s.push_str("  }\n");
        }
        Receiver::NftSet(n) => {
            s.push_str("  set allow {\n    type ipv4_addr . inet_proto . inet_service\n    flags interval\n    elements = {\n");
            for i in 0..*n {
                let proto = workload::rule_protocol(i, true);
                let _ = writeln!(
                    s,
                    "      {} . {proto} . {},",
                    workload::rule_net(Family::V4, i),
                    workload::rule_port(i)
                );
            }
            s.push_str("    }\n  }\n");
            let _ = write!(
                s,
                "  chain ingress {{\n{chain_head}    ip daddr . meta l4proto . th dport @allow accept\n  }}\n"
            );
        }
        _ => {}
    }
    s.push_str("}\n");
    s
}

/// veth counters of one interface (summed over queues).
#[derive(Clone, Copy, Debug, Default)]
struct VethStats {
    xdp_packets: u64,
    xdp_drops: u64,
    rx_drops: u64,
    xdp_xmit: u64,
    xdp_xmit_errors: u64,
}

fn veth_stats(iface: &str) -> Result<VethStats> {
    let out = sys::run("ethtool", &["-S", iface])?;
    let mut s = VethStats::default();
    for line in out.lines() {
        let Some((k, v)) = line.trim().split_once(':') else { continue };
        let Ok(v) = v.trim().parse::<u64>() else { continue };
        if k.starts_with("rx_queue_") && k.ends_with("_xdp_packets") {
            s.xdp_packets += v;
        } else if k.starts_with("rx_queue_") && k.ends_with("_xdp_drops") {
            s.xdp_drops += v;
        } else if k.starts_with("rx_queue_") && k.ends_with("_drops") {
            s.rx_drops += v;
        } else if k.starts_with("tx_queue_") && k.ends_with("_xdp_xmit") {
            s.xdp_xmit += v;
        } else if k.starts_with("tx_queue_") && k.ends_with("_xdp_xmit_errors") {
            s.xdp_xmit_errors += v;
        }
    }
    Ok(s)
}

/// Frames that went up the stack from `dut` and were dropped at the IP layer as
/// addressed to another host (what passed frames do here): `ip -s -s link`'s otherhost.
fn otherhost(iface: &str) -> Result<u64> {
    let out = sys::run("ip", &["-s", "-s", "-j", "link", "show", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0]["stats64"]["rx"]["otherhost"].as_u64().unwrap_or(0))
}

#[derive(Clone, Debug)]
struct Sample {
    config: usize,
    sent: u64,
    calls: usize,
    wall_s: f64,
    kernel_s: f64,
    rx: u64,
    xdp_drops: u64,
    rx_drops: u64,
    xmit_err: u64,
    stack_rx: u64,
    verdicts: Option<(u64, u64)>,
}

impl Sample {
    /// Received frames over the time the kernel reports for the generator's send loop
    /// (BPF_PROG_TEST_RUN's duration, whole ns per frame, x frames): the receiver's
    /// softirq runs inside that loop on the same CPU; time the thread spent preempted
    /// by other processes is left out.
    fn mpps(&self) -> f64 {
        self.rx as f64 / self.kernel_s / 1e6
    }
    /// Received frames over the wall time of the generator run.
    fn wall_mpps(&self) -> f64 {
        self.rx as f64 / self.wall_s / 1e6
    }
    /// Wall time per call outside the kernel's timed loop, ms.
    fn gap_ms(&self) -> f64 {
        (self.wall_s - self.kernel_s) * 1e3 / self.calls.max(1) as f64
    }
}

pub struct Results {
    opts: Opts,
    machine: Machine,
    configs: Vec<Config>,
    samples: Vec<Sample>,
    xdp_modes: BTreeMap<String, String>,
    nft_load_ms: BTreeMap<String, Vec<f64>>,
    nft_version: String,
    elapsed_s: f64,
}

struct Bench<'a> {
    opts: &'a Opts,
    tx: Xdp,
    drop: Xdp,
    pass: Xdp,
    gen_ifindex: u32,
    tmp: PathBuf,
}

impl Bench<'_> {
    /// Sends `count` copies of `frame` out of `gen`; returns the kernel's time.
    fn send(&self, frame: &[u8], count: u32) -> Result<Duration> {
        let mut ctx = [0u8; 24]; // struct xdp_md
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes()); // data_end
        ctx[12..16].copy_from_slice(&self.gen_ifindex.to_ne_bytes()); // ingress_ifindex
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(self.opts.batch),
            ..Default::default()
        };
        let r = self.tx.test_run(opts).context("BPF_PROG_TEST_RUN (live frames)")?;
        Ok(r.duration * count)
    }

    /// Warms up (one call of the first frame) and plans the run: (copies per call,
    /// rounds over the frames), within --packets and --max-seconds.
    fn plan(&self, frames: &[Vec<u8>]) -> Result<(u32, usize)> {
        let o = self.opts;
        let cal = o.burst.clamp(o.batch, 4096);
        let k = self.send(&frames[0], cal)?;
        let est_pps = f64::from(cal) / k.as_secs_f64().max(1e-6);
        std::thread::sleep(Duration::from_millis(20));
        let f = frames.len() as f64;
        let planned = (o.packets as f64).min(est_pps * o.max_seconds).max(f64::from(o.batch) * f);
        let per_round = f64::from(o.burst) * f;
        Ok(if planned >= per_round {
            (o.burst, (planned / per_round).round().max(1.0) as usize)
        } else {
            let b = ((planned / f) / f64::from(o.batch)).floor().max(1.0) as u32 * o.batch;
            (b, 1)
        })
    }

    /// Sends every frame `burst` times per round; counts what `dut` received.
    fn measure(&self, config: usize, frames: &[Vec<u8>], (burst, rounds): (u32, usize)) -> Result<Sample> {
        let dut0 = veth_stats("dut")?;
        let gen0 = veth_stats("gen")?;
        let oh0 = otherhost("dut")?;
        let mut kernel = Duration::ZERO;
        let mut sent = 0u64;
        let mut calls = 0usize;
        let t0 = Instant::now();
        for _ in 0..rounds {
            for f in frames {
                kernel += self.send(f, burst)?;
                sent += u64::from(burst);
                calls += 1;
            }
        }
        let wall = t0.elapsed();
        std::thread::sleep(Duration::from_millis(50));
        let dut1 = veth_stats("dut")?;
        let gen1 = veth_stats("gen")?;
        let oh1 = otherhost("dut")?;
        Ok(Sample {
            config,
            sent,
            calls,
            wall_s: wall.as_secs_f64(),
            kernel_s: kernel.as_secs_f64(),
            rx: dut1.xdp_packets - dut0.xdp_packets,
            xdp_drops: dut1.xdp_drops - dut0.xdp_drops,
            rx_drops: dut1.rx_drops - dut0.rx_drops,
            xmit_err: gen1.xdp_xmit_errors - gen0.xdp_xmit_errors,
            stack_rx: oh1 - oh0,
            verdicts: None,
        })
    }

    fn xdp_mode(&self) -> String {
        let out = sys::run("ip", &["-j", "link", "show", "dut"]).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        match v[0]["xdp"]["mode"].as_u64() {
            Some(1) => "native".into(),
            Some(2) => "generic".into(),
            Some(3) => "offload".into(),
            _ => "?".into(),
        }
    }

    fn nft_load(&self, receiver: &Receiver) -> Result<f64> {
        let path = self.tmp.join(format!("{}.nft", receiver_file(receiver)));
        fs::write(&path, nft_ruleset(receiver))?;
        let t = Instant::now();
        sys::run("nft", &["-f", path.to_str().expect("utf-8")])?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }
}

fn receiver_file(r: &Receiver) -> String {
    match r {
        Receiver::NftEmpty => "nft-empty".into(),
        Receiver::NftList(n) => format!("nft-list-{n}"),
        Receiver::NftSet(n) => format!("nft-set-{n}"),
        _ => "other".into(),
    }
}

pub fn run(opts: Opts) -> Result<Results> {
    sys::require_root()?;
    ensure!((1..=256).contains(&opts.batch), "--batch 1-256");
    ensure!(opts.frames >= 1 && opts.frames <= 30_000, "--frames 1-30000");
    ensure!(opts.burst >= opts.batch, "--burst must be at least --batch");
    let configs = configs(&opts);
    ensure!(!configs.is_empty(), "no configuration selected");
    let nft_version =
        if opts.skip_nft { String::new() } else { sys::run("nft", &["--version"])?.trim().to_string() };
    let machine = Machine::probe();
    let started = Instant::now();

    let pins = PinDir::new("live")?;
    let tmp = opts
        .nft_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/{}-{}", sys::PREFIX, std::process::id())));
    fs::create_dir_all(&tmp)?;
    let ns = NetnsGuard::create_and_enter(&format!("{}-{}", sys::PREFIX, std::process::id()))?;
    let result = run_in_netns(&opts, &configs, &pins, &tmp);
    drop(ns);
    drop(pins);
    if opts.nft_dir.is_none() {
        fs::remove_dir_all(&tmp).ok();
    }
    let (samples, xdp_modes, nft_load_ms) = result?;
    Ok(Results {
        opts,
        machine,
        configs,
        samples,
        xdp_modes,
        nft_load_ms,
        nft_version,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

type Collected = (Vec<Sample>, BTreeMap<String, String>, BTreeMap<String, Vec<f64>>);

fn run_in_netns(opts: &Opts, configs: &[Config], pins: &PinDir, tmp: &std::path::Path) -> Result<Collected> {
    // No IPv6 autoconfiguration chatter on the pair.
    fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1").ok();
    fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1").ok();
    sys::run(
        "ip",
        &[
            "link",
            "add",
            "gen",
            "address",
            "02:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "dut",
            "address",
            "02:00:00:00:00:02",
        ],
    )?;
    sys::run("ip", &["link", "set", "gen", "up"])?;
    sys::run("ip", &["link", "set", "dut", "up"])?;
    let gen_ifindex = sys::ifindex("gen")?;
    let dut_ifindex = sys::ifindex("dut")?;

    let mut dp = Dataplane::open(&pins.path, Capacity::default()).context("opening a private data plane")?;
    let mut load = |name: &str| -> Result<Xdp> {
        let pin = pins.path.join(name);
        let prog: &mut Xdp = dp
            .ebpf_mut()
            .program_mut(name)
            .ok_or_else(|| anyhow!("{name} missing from the eBPF object"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.pin(&pin)?;
        Ok(Xdp::from_pin(&pin, XdpAttachType::Interface)?)
    };
    let mut tx = load("sg_bench_tx")?;
    // Kept in the XDP dispatcher (see sys::parking_veth), else every generator call pays two
    // synchronize_rcu() outside the measured loop.
    let (park, _) = sys::parking_veth("sgxpark0", "sgxpark1")?;
    tx.attach(park, XdpMode::Default).context("parking sg_bench_tx on a veth")?;
    let drop_prog = load("sg_bench_drop")?;
    let pass_prog = load("sg_bench_empty")?;
    let mut bench = Bench { opts, tx, drop: drop_prog, pass: pass_prog, gen_ifindex, tmp: tmp.to_path_buf() };
    if opts.probe {
        let id = bench.drop.attach(dut_ifindex, XdpMode::Default)?;
        let _pin = CpuPin::new(opts.cpu)?;
        let f = traffic_frames(opts, Traffic::Dropped);
        for count in [64u32, 1024, 16_384, 262_144, 1_048_576, 4_194_304] {
            for _ in 0..3 {
                let t = Instant::now();
                let k = bench.send(&f[0], count)?;
                let wall = t.elapsed();
                eprintln!(
                    "probe: {count:>8} frames: wall {:>9.3} ms, kernel {:>9.3} ms, overhead {:>7.3} ms, {:.2} Mpps kernel-timed",
                    wall.as_secs_f64() * 1e3,
                    k.as_secs_f64() * 1e3,
                    (wall - k.min(wall)).as_secs_f64() * 1e3,
                    f64::from(count) / k.as_secs_f64() / 1e6
                );
            }
        }
        bench.drop.detach(id)?;
        return Ok((vec![], BTreeMap::new(), BTreeMap::new()));
    }
    let allowed = traffic_frames(opts, Traffic::Allowed);
    let dropped = traffic_frames(opts, Traffic::Dropped);
    // XDP_TX of live frames goes straight into `dut`'s ring; `dut` must carry an XDP
    // program or veth drops them, so every configuration attaches one there.

    let mut samples = Vec::new();
    let mut modes = BTreeMap::new();
    let mut nft_ms: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let _pin = CpuPin::new(opts.cpu)?;
    for run in 0..opts.runs {
        eprintln!("live: round {}/{} (load {})", run + 1, opts.runs, sys::loadavg());
        for (ci, c) in configs.iter().enumerate() {
            let frames = match c.traffic {
                Traffic::Allowed | Traffic::Established => &allowed,
                Traffic::Dropped => &dropped,
            };
            let mut sample = match &c.receiver {
                Receiver::XdpDrop | Receiver::XdpPass => {
                    let prog =
                        if c.receiver == Receiver::XdpDrop { &mut bench.drop } else { &mut bench.pass };
                    let id = prog.attach(dut_ifindex, XdpMode::Default).context("attaching a baseline")?;
                    modes.insert(c.name(), bench.xdp_mode());
                    let r = bench.plan(frames).and_then(|p| bench.measure(ci, frames, p));
                    let prog =
                        if c.receiver == Receiver::XdpDrop { &mut bench.drop } else { &mut bench.pass };
                    prog.detach(id)?;
                    r?
                }
                Receiver::SgDefault | Receiver::Sg(_) => {
                    let rules = match c.receiver {
                        Receiver::Sg(n) => workload::rules(n, Direction::Egress, Family::V4, true),
                        _ => default_rules(Os::Linux),
                    };
                    let policy_id = replace_rules(&mut dp, dut_ifindex, &rules)?;
                    dp.clear_flows()?;
                    if c.traffic == Traffic::Established {
                        establish(&mut dp, dut_ifindex, policy_id, frames)?;
                    }
                    dp.attach(dut_ifindex)?;
                    modes.insert(c.name(), bench.xdp_mode());
                    let plan = bench.plan(frames);
                    let before = dp.verdict_counts()?;
                    let r = plan.and_then(|p| bench.measure(ci, frames, p));
                    let after = dp.verdict_counts()?;
                    dp.unbind(dut_ifindex)?;
                    dp.detach(dut_ifindex)?;
                    dp.collect_garbage()?;
                    let d = |r: Reason| {
                        after.get(&r).copied().unwrap_or(0) - before.get(&r).copied().unwrap_or(0)
                    };
                    let mut s = r?;
                    let allowed = if c.traffic == Traffic::Established {
                        Reason::AllowTracked
                    } else {
                        Reason::AllowRule
                    };
                    s.verdicts = Some((d(allowed), d(Reason::DropNoRule)));
                    s
                }
                Receiver::NftEmpty | Receiver::NftList(_) | Receiver::NftSet(_) => {
                    let ms = bench.nft_load(&c.receiver)?;
                    nft_ms.entry(receiver_file(&c.receiver)).or_default().push(ms);
                    let id = bench
                        .pass
                        .attach(dut_ifindex, XdpMode::Default)
                        .context("attaching sg_bench_empty")?;
                    modes.insert(c.name(), bench.xdp_mode());
                    let r = bench.plan(frames).and_then(|p| bench.measure(ci, frames, p));
                    bench.pass.detach(id)?;
                    sys::run("nft", &["delete", "table", "netdev", "sgbench"])?;
                    r?
                }
            };
            check(c, &mut sample)?;
            eprintln!(
                "  {:<24} {:>7.3} Mpps ({:.3} wall) (sent {} in {} calls, {:.2} s, gap {:.1} ms/call, rx {}, xdp drops {}, to stack {}{})",
                c.name(),
                sample.mpps(),
                sample.wall_mpps(),
                sample.sent,
                sample.calls,
                sample.wall_s,
                sample.gap_ms(),
                sample.rx,
                sample.xdp_drops,
                sample.stack_rx,
                sample.verdicts.map(|(a, d)| format!(", sg allow {a} drop {d}")).unwrap_or_default()
            );
            samples.push(sample);
        }
    }
    let _ = &mut bench;
    Ok((samples, modes, nft_ms))
}

/// Checks the frames went where the configuration says.
fn check(c: &Config, s: &mut Sample) -> Result<()> {
    let lost = s.sent.saturating_sub(s.rx);
    if lost * 1000 > s.sent {
        bail!(
            "{}: {} of {} frames sent never reached dut's XDP program (xmit errors {})",
            c.name(),
            lost,
            s.sent,
            s.xmit_err
        );
    }
    let xdp_dropped = matches!(c.receiver, Receiver::XdpDrop)
        || (matches!(c.receiver, Receiver::Sg(_) | Receiver::SgDefault) && !c.passes());
    if xdp_dropped {
        ensure!(s.xdp_drops == s.rx, "{}: {} XDP drops for {} frames", c.name(), s.xdp_drops, s.rx);
    } else {
        ensure!(s.xdp_drops == 0, "{}: {} unexpected XDP drops", c.name(), s.xdp_drops);
    }
    if let Some((allow, drop)) = s.verdicts {
        let want = if c.passes() { allow } else { drop };
        ensure!(want == s.rx, "{}: sg counted allow {allow} / drop {drop} for {} frames", c.name(), s.rx);
    }
    Ok(())
}

impl Results {
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn summary(&self, ci: usize) -> Summary {
        let v: Vec<f64> = self.samples.iter().filter(|s| s.config == ci).map(Sample::mpps).collect();
        Summary::of(&v)
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.configs.iter().position(|c| c.name() == name)
    }

    /// Per-run ratio of two configurations' rates, summarised.
    fn ratio(&self, a: &str, b: &str) -> Option<Summary> {
        let (a, b) = (self.find(a)?, self.find(b)?);
        let ra: Vec<f64> = self.samples.iter().filter(|s| s.config == a).map(Sample::mpps).collect();
        let rb: Vec<f64> = self.samples.iter().filter(|s| s.config == b).map(Sample::mpps).collect();
        let r: Vec<f64> = ra.iter().zip(&rb).map(|(x, y)| x / y).collect();
        (!r.is_empty()).then(|| Summary::of(&r))
    }

    pub fn markdown(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.machine.markdown());
        let _ = writeln!(
            s,
            "- Command: `sudo cargo run --release -p xtask -- bench live --runs {} --packets {} --frames {} --burst {} --batch {} --cpu {} --max-seconds {} --rules {} --write-docs` ({:.0} s){}",
            o.runs,
            o.packets,
            o.frames,
            o.burst,
            o.batch,
            o.cpu,
            o.max_seconds,
            o.rules.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
            self.elapsed_s,
            if self.nft_version.is_empty() { String::new() } else { format!("; {}", self.nft_version) }
        );
        let _ = writeln!(
            s,
            "- Generator: `sg_bench_tx` in live-frames mode on `gen` (batch {}), {} distinct 60-byte IPv4 frames \
             sent round-robin, {} copies per BPF_PROG_TEST_RUN call, up to {} frames or {} s per configuration \
             and round; generator thread pinned to CPU {} at nice -20. veth runs `dut`'s NAPI poll in the softirq \
             the generator raises (at the end of each batch), on the same CPU: one core does all the work, so \
             ns/frame = cost to send + cost to receive.\n\
             - Mpps = `rx_queue_0_xdp_packets` delta on `dut` / the time the kernel reports for the generator's send \
             loop (BPF_PROG_TEST_RUN duration x frames; the receiver's softirq runs inside it). The wall-clock rate \
             (`Mpps wall`) is also given: on this shared 2-vCPU VM it moves with the other processes that get CPU {} \
             (the kernel's timer pauses while the thread is preempted), while the kernel-timed rate held steady across \
             idle and loaded periods; without load the two agreed within ~1 ms per call.\n\
             - Every frame sent was received and got the verdict the row names (checked on every run: veth \
             counters, sg's verdict counters, the `otherhost` drops of passed frames).\n\
             - `sg_bench_tx` is kept attached to an idle veth: a BPF_PROG_TEST_RUN of an XDP program attached nowhere \
             adds it to and removes it from the XDP dispatcher, two `synchronize_rcu()` that cost ~25 ms per call here.\n\
             - Values: median of {} rounds ± half the min-max range; every round measures every configuration in turn.\n",
            o.batch, o.frames, o.burst, o.packets, o.max_seconds, o.cpu, o.cpu, o.runs
        );
        let drop_ref = self.find("xdp-drop");
        let pass_ref = self.find("xdp-pass");
        let _ = writeln!(
            s,
            "| receiver on `dut` | rules | traffic | verdict | Mpps | ns/frame | Mpps wall | vs `sg_bench_drop` | vs `sg_bench_empty` | XDP mode |"
        );
        let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|---:|---:|---|");
        for (ci, c) in self.configs.iter().enumerate() {
            let m = self.summary(ci);
            let vs = |r: Option<usize>| {
                r.and_then(|r| self.ratio(&c.name(), &self.configs[r].name()))
                    .map(|x| format!("{:.0}%", 100.0 * x.median))
                    .unwrap_or_default()
            };
            let traffic = match (&c.receiver, c.traffic) {
                (Receiver::XdpDrop | Receiver::XdpPass | Receiver::NftEmpty, _) => "any",
                (_, Traffic::Allowed) => "allowed by a rule (untracked ACKs)",
                (_, Traffic::Established) => "established flows (tracked ACKs)",
                (_, Traffic::Dropped) => "no rule matches",
            };
            let wall: Vec<f64> =
                self.samples.iter().filter(|s| s.config == ci).map(Sample::wall_mpps).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                c.receiver_label(),
                c.rules_label(),
                traffic,
                c.verdict_label(),
                m.fmt(3),
                1e3 / m.median,
                Summary::of(&wall).fmt(3),
                vs(drop_ref),
                vs(pass_ref),
                self.xdp_modes.get(&c.name()).cloned().unwrap_or_default()
            );
        }
        let _ = writeln!(s, "\n**Bars** (ratios per round, median ± half range):\n");
        for &n in &o.rules {
            let lines = [
                (
                    format!("sg-{n}-dropped"),
                    "xdp-drop".to_string(),
                    "sg dropping vs XDP_DROP (drop-to-drop)",
                    0.8,
                ),
                (
                    format!("sg-{n}-allowed"),
                    "xdp-pass".to_string(),
                    "sg passing vs XDP_PASS (pass-to-pass)",
                    0.8,
                ),
                (
                    format!("sg-{n}-dropped"),
                    "xdp-pass".to_string(),
                    "sg dropping vs the empty XDP_PASS program (the brief's literal bar)",
                    0.8,
                ),
                (
                    format!("sg-{n}-dropped"),
                    format!("nft-set-{n}-dropped"),
                    "sg dropping vs nft set dropping (drop-to-drop)",
                    3.0,
                ),
                (
                    format!("sg-{n}-dropped"),
                    format!("nft-list-{n}-dropped"),
                    "sg dropping vs nft rule list dropping",
                    3.0,
                ),
                (
                    format!("sg-{n}-established"),
                    "xdp-pass".to_string(),
                    "sg passing established flows vs XDP_PASS (pass-to-pass)",
                    0.8,
                ),
                (
                    format!("sg-{n}-allowed"),
                    format!("nft-set-{n}-allowed"),
                    "sg passing vs nft set accepting (pass-to-pass)",
                    0.0,
                ),
            ];
            for (a, b, what, bar) in lines {
                if let Some(r) = self.ratio(&a, &b) {
                    let verdict = if bar == 0.0 {
                        String::new()
                    } else if r.median >= bar {
                        format!(" — bar {bar}x: **met**")
                    } else {
                        format!(" — bar {bar}x: **NOT met**")
                    };
                    let _ = writeln!(s, "- {} rules, {what}: {}x{verdict}", group(n), r.fmt(2));
                }
            }
        }
        if !self.nft_load_ms.is_empty() {
            let _ = writeln!(
                s,
                "\n`nft -f` load time (ms): {}",
                self.nft_load_ms
                    .iter()
                    .map(|(k, v)| format!("{k} {}", Summary::of(v).fmt(0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(
            s,
            "\nPer round, Mpps (wall-clock Mpps in parentheses): {}",
            self.configs
                .iter()
                .enumerate()
                .map(|(ci, c)| {
                    let v: Vec<String> = self
                        .samples
                        .iter()
                        .filter(|x| x.config == ci)
                        .map(|x| format!("{:.3} ({:.3})", x.mpps(), x.wall_mpps()))
                        .collect();
                    format!("{} [{}]", c.name(), v.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "machine": { "cpu": self.machine.cpu_model, "cpus": self.machine.cpus, "kernel": self.machine.kernel, "date": self.machine.date },
            "opts": format!("{:?}", self.opts),
            "samples": self.samples.iter().map(|s| serde_json::json!({
                "config": self.configs[s.config].name(), "sent": s.sent, "wall_s": s.wall_s, "kernel_s": s.kernel_s,
                "rx": s.rx, "xdp_drops": s.xdp_drops, "rx_queue_drops": s.rx_drops, "xmit_errors": s.xmit_err,
                "to_stack": s.stack_rx, "mpps": s.mpps(), "wall_mpps": s.wall_mpps(), "calls": s.calls,
                "gap_ms_per_call": s.gap_ms(), "sg_verdicts": s.verdicts,
            })).collect::<Vec<_>>(),
        })
    }
}
