//! `xtask bench classify`: cost per packet of sg's programs under BPF_PROG_TEST_RUN,
//! against rule count, minus an empty program measured on the same frames.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use aya::maps::{HashMap as BpfHashMap, MapData};
use sg_common::abi::{CtEntry, CtKey, MAP_CT, MAP_CT_NEW, Reason};
use sg_common::model::Direction;
use sg_daemon::apply::replace_rules;
use sg_daemon::compile::compile;
use sg_daemon::dataplane::{Capacity, Dataplane};
use sg_daemon::testrun::{TEST_RUN_IFINDEX, TestRunner};

use crate::stats::Summary;
use crate::sys::{self, CpuPin, Machine, PinDir};
use crate::workload::{self, Family, L4};

#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Rule counts per instance.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,5000")]
    pub rules: Vec<usize>,
    /// Distinct frames per scenario (each run separately).
    #[arg(long, default_value_t = 1024)]
    pub frames: usize,
    /// BPF_PROG_TEST_RUN repetitions of each frame.
    #[arg(long, default_value_t = 2000)]
    pub repeat: u32,
    /// Full sweeps; results are the median over sweeps, ± half the min-max range.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// CPU the measuring thread is pinned to.
    #[arg(long, default_value_t = 1)]
    pub cpu: usize,
    /// Write the results into docs/benchmarks.md and docs/bench-classify.svg.
    #[arg(long)]
    pub write_docs: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prog {
    /// `sg_instance_ingress` (TC, tcx egress of the host-side interface).
    Tc,
    /// `sg_instance_egress` (XDP on the host-side interface).
    Xdp,
}

impl Prog {
    pub const ALL: [Prog; 2] = [Prog::Tc, Prog::Xdp];
    fn direction(self) -> Direction {
        match self {
            Prog::Tc => Direction::Ingress,
            Prog::Xdp => Direction::Egress,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Prog::Tc => "TC (instance ingress)",
            Prog::Xdp => "XDP (instance egress)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Untracked packets (TCP ACK without a flow: every one goes through the rules).
    First,
    Last,
    Spread,
    NoMatch,
    /// TCP SYNs of fresh flows, each run once: rules plus opening a conntrack entry.
    NewFlow,
    /// TCP ACKs of established flows: decided by conntrack, the rules are not consulted.
    Established,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::First,
        Scenario::Last,
        Scenario::Spread,
        Scenario::NoMatch,
        Scenario::NewFlow,
        Scenario::Established,
    ];
    /// The scenarios whose packets are decided by the rules (the target applies to them).
    pub fn through_rules(self) -> bool {
        self != Scenario::Established
    }
    pub fn label(self) -> &'static str {
        match self {
            Scenario::First => "first rule matches",
            Scenario::Last => "last rule matches",
            Scenario::Spread => "spread over all rules",
            Scenario::NoMatch => "no rule matches",
            Scenario::NewFlow => "new flow (SYN, spread)",
            Scenario::Established => "established flow (spread)",
        }
    }
    fn allowed(self) -> bool {
        self != Scenario::NoMatch
    }
    fn expected_reason(self) -> Reason {
        match self {
            Scenario::NoMatch => Reason::DropNoRule,
            Scenario::Established => Reason::AllowTracked,
            _ => Reason::AllowRule,
        }
    }
}

/// Remote address and rule of frame `k` of a scenario.
fn scenario_target(family: Family, n: usize, scenario: Scenario, k: usize) -> (IpAddr, usize) {
    match scenario {
        Scenario::First => (workload::host_in_rule(family, 0, k), 0),
        Scenario::Last => (workload::host_in_rule(family, n - 1, k), n - 1),
        Scenario::Spread | Scenario::NewFlow | Scenario::Established => {
            let r = workload::spread(k, n);
            (workload::host_in_rule(family, r, k), r)
        }
        // Ports of existing rules, remote outside every network: both lookups happen,
        // the second one misses.
        Scenario::NoMatch => (workload::host_outside(family, k), workload::spread(k, n)),
    }
}

/// Client port of frame `k` (distinct per frame and per pass).
fn client_port(k: usize, pass: usize, count: usize) -> u16 {
    (10_000 + (pass * count + k) % 50_000) as u16
}

/// The measured frames of a scenario: `count` distinct tuples. The flow is opened by the
/// instance for the XDP program (egress) and by the remote for the TC program (ingress),
/// so the instance-side port is the client port (XDP) or the rule's port (TC).
fn scenario_frames(prog: Prog, family: Family, n: usize, scenario: Scenario, count: usize, pass: usize) -> Vec<Vec<u8>> {
    let flags = if scenario == Scenario::NewFlow { workload::SYN } else { workload::ACK };
    (0..count)
        .map(|k| {
            let (remote, rule) = scenario_target(family, n, scenario, k);
            let sport = client_port(k, pass, count);
            workload::frame(prog.direction(), remote, sport, workload::rule_port(rule), L4::Tcp(flags))
        })
        .collect()
}

/// SYN, SYN-ACK, ACK of the flows of `scenario_frames(.., Established, ..)`.
fn handshake_frames(prog: Prog, family: Family, n: usize, count: usize) -> Vec<[(Direction, Vec<u8>); 3]> {
    let dir = prog.direction();
    let back = match dir {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    (0..count)
        .map(|k| {
            let (remote, rule) = scenario_target(family, n, Scenario::Established, k);
            let (c, p) = (client_port(k, 0, count), workload::rule_port(rule));
            [
                (dir, workload::frame(dir, remote, c, p, L4::Tcp(workload::SYN))),
                (back, workload::frame(back, remote, p, c, L4::Tcp(workload::SYN | workload::ACK))),
                (dir, workload::frame(dir, remote, c, p, L4::Tcp(workload::ACK))),
            ]
        })
        .collect()
}

/// A program handle for timed test runs.
enum Runner {
    Xdp(Xdp),
    Tc(SchedClassifier),
}

impl Runner {
    /// Mean ns per repetition (kernel-measured, whole ns) and the return value.
    fn run(&self, frame: &[u8], repeat: u32, out: &mut [u8]) -> Result<(u32, u32)> {
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(out), repeat, ..Default::default() };
        let r = match self {
            Runner::Xdp(p) => p.test_run(opts)?,
            Runner::Tc(p) => p.test_run(opts)?,
        };
        Ok((r.return_value, r.duration.as_nanos() as u32))
    }
}

/// One (program, family, scenario, rule count) result of one sweep.
#[derive(Clone, Debug)]
pub struct Sample {
    pub prog: Prog,
    pub family: Family,
    pub scenario: Scenario,
    pub rules: usize,
    pub run: usize,
    pub sg_ns: f64,
    pub base_ns: f64,
}

/// Compile and install figures of one rule set.
#[derive(Clone, Debug)]
pub struct InstallStat {
    pub prog: Prog,
    pub family: Family,
    pub rules: usize,
    pub port_entries: usize,
    pub cidr_entries: usize,
    pub compile_ms: Vec<f64>,
    pub replace_ms: Vec<f64>,
}

/// Step timings of `replace_rules` at the largest rule count.
#[derive(Clone, Debug, Default)]
pub struct ReplaceBreakdown {
    pub rules: usize,
    pub entries: usize,
    /// (case, [fresh_policy_id, compile, write_policy, bind, collect_garbage, total]) per repetition.
    pub steps: Vec<(&'static str, [f64; 6])>,
}

pub struct Results {
    pub opts: Opts,
    pub machine: Machine,
    pub samples: Vec<Sample>,
    pub installs: BTreeMap<(usize, Family, Prog), InstallStat>,
    pub unmanaged: Vec<(Prog, Family, f64, f64)>,
    pub replace: ReplaceBreakdown,
    pub elapsed_s: f64,
}

pub fn run(opts: Opts) -> Result<Results> {
    sys::require_root()?;
    ensure!(!opts.rules.is_empty() && opts.rules.iter().all(|&n| (1..=65_536).contains(&n)), "rule counts 1-65536");
    ensure!(opts.frames >= 1 && opts.frames <= 60_000, "--frames 1-60000");
    let machine = Machine::probe();
    let started = Instant::now();
    let pins = PinDir::new("classify")?;
    let mut dp = Dataplane::open(&pins.path, Capacity::default()).context("opening a private data plane")?;

    // Baselines, loaded into the private data plane's object (its maps are already pinned
    // in the private directory: loading the object a second time would pin them under
    // /sys/fs/bpf, aya has no "do not pin" switch).
    let empty_xdp_pin = pins.path.join("bench_empty");
    {
        let prog: &mut Xdp = dp
            .ebpf_mut()
            .program_mut("sg_bench_empty")
            .ok_or_else(|| anyhow!("sg_bench_empty missing from the eBPF object"))?
            .try_into()?;
        prog.load().context("loading sg_bench_empty")?;
        prog.pin(&empty_xdp_pin)?;
    }
    let empty_tc_pin = pins.path.join("bench_empty_tc");
    sys::load_empty_tc(&empty_tc_pin)?;
    let base_xdp = Runner::Xdp(Xdp::from_pin(&empty_xdp_pin, XdpAttachType::Interface)?);
    let base_tc = Runner::Tc(SchedClassifier::from_pin(&empty_tc_pin)?);
    let sg_xdp = Runner::Xdp(Xdp::from_pin(pins.path.join("prog_egress"), XdpAttachType::Interface)?);
    let sg_tc = Runner::Tc(SchedClassifier::from_pin(pins.path.join("prog_ingress"))?);
    let checker = TestRunner::open(&pins.path)?;

    let _pin = CpuPin::new(opts.cpu)?;
    let m = Measurer { sg_xdp, sg_tc, base_xdp, base_tc, checker, repeat: opts.repeat };
    let mut samples = Vec::new();
    let mut installs: BTreeMap<(usize, Family, Prog), InstallStat> = BTreeMap::new();
    let mut unmanaged = Vec::new();

    for run in 0..opts.runs {
        eprintln!("classify: sweep {}/{} (load {})", run + 1, opts.runs, sys::loadavg());
        for &n in &opts.rules {
            for family in Family::ALL {
                for prog in Prog::ALL {
                    let rules = workload::rules(n, prog.direction(), family, false);
                    let t = Instant::now();
                    let compiled = compile(1, &rules);
                    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
                    let t = Instant::now();
                    replace_rules(&mut dp, TEST_RUN_IFINDEX, &rules)?;
                    let replace_ms = t.elapsed().as_secs_f64() * 1e3;
                    let stat = installs.entry((n, family, prog)).or_insert_with(|| InstallStat {
                        prog,
                        family,
                        rules: n,
                        port_entries: compiled.port_classes.len(),
                        cidr_entries: compiled.cidrs.len(),
                        compile_ms: vec![],
                        replace_ms: vec![],
                    });
                    stat.compile_ms.push(compile_ms);
                    stat.replace_ms.push(replace_ms);
                    if run == 0 {
                        let stored = dp.entry_counts()?;
                        ensure!(
                            stored == (compiled.port_classes.len(), compiled.cidrs.len()),
                            "stored entries {stored:?} differ from the compiled ones"
                        );
                    }
                    for scenario in Scenario::ALL {
                        let (sg_ns, base_ns) = m.scenario(&mut dp, prog, family, n, scenario, opts.frames, run)?;
                        samples.push(Sample { prog, family, scenario, rules: n, run, sg_ns, base_ns });
                    }
                }
            }
            eprintln!("  {n} rules done ({:.0} s)", started.elapsed().as_secs_f64());
        }
        // The programs on an interface no policy is bound to: one hash lookup, then pass.
        dp.unbind(TEST_RUN_IFINDEX)?;
        for prog in Prog::ALL {
            for family in Family::ALL {
                let frames = scenario_frames(prog, family, 1, Scenario::First, opts.frames, 0);
                let (a, b) = m.timed(prog, &frames, opts.repeat)?;
                unmanaged.push((prog, family, a, b));
            }
        }
    }

    let replace = replace_breakdown(&mut dp, *opts.rules.iter().max().expect("non-empty"))?;
    drop(m);
    drop(dp);
    drop(pins);
    Ok(Results { opts, machine, samples, installs, unmanaged, replace, elapsed_s: started.elapsed().as_secs_f64() })
}

struct Measurer {
    sg_xdp: Runner,
    sg_tc: Runner,
    base_xdp: Runner,
    base_tc: Runner,
    checker: TestRunner,
    repeat: u32,
}

impl Measurer {
    fn pair(&self, prog: Prog) -> (&Runner, &Runner) {
        match prog {
            Prog::Tc => (&self.sg_tc, &self.base_tc),
            Prog::Xdp => (&self.sg_xdp, &self.base_xdp),
        }
    }

    /// Mean ns per packet of sg and of the empty program over `frames`, each frame run
    /// `repeat` times, sg then empty on the same frame (drift hits both alike).
    fn timed(&self, prog: Prog, frames: &[Vec<u8>], repeat: u32) -> Result<(f64, f64)> {
        let (sg, base) = self.pair(prog);
        let mut out = [0u8; 512];
        let (mut a, mut b) = (0u64, 0u64);
        for f in frames {
            a += u64::from(sg.run(f, repeat, &mut out)?.1);
            b += u64::from(base.run(f, repeat, &mut out)?.1);
        }
        let k = frames.len() as f64;
        Ok((a as f64 / k, b as f64 / k))
    }

    fn scenario(
        &self,
        dp: &mut Dataplane,
        prog: Prog,
        family: Family,
        n: usize,
        scenario: Scenario,
        count: usize,
        run: usize,
    ) -> Result<(f64, f64)> {
        clear_flows(dp)?;
        let want = scenario.expected_reason();
        let before = dp.verdict_counts()?;
        let (result, packets) = match scenario {
            Scenario::NewFlow => {
                // Fresh tuples, one run each; the tracker is emptied between passes so
                // every SYN opens a flow.
                let passes = 4;
                let (mut a, mut b) = (0.0, 0.0);
                for pass in 0..passes {
                    clear_flows(dp)?;
                    let frames = scenario_frames(prog, family, n, scenario, count, run * passes + pass);
                    let (x, y) = self.timed(prog, &frames, 1)?;
                    a += x;
                    b += y;
                }
                ((a / passes as f64, b / passes as f64), (passes * count) as u64)
            }
            Scenario::Established => {
                for (k, steps) in handshake_frames(prog, family, n, count).iter().enumerate() {
                    for (dir, f) in steps {
                        let r = self.checker.run(*dir, f, 1)?;
                        ensure!(r.pass, "{prog:?} handshake of flow {k} dropped");
                    }
                }
                let before = dp.verdict_counts()?;
                let frames = scenario_frames(prog, family, n, scenario, count, 0);
                let r = self.timed(prog, &frames, self.repeat)?;
                let after = dp.verdict_counts()?;
                let got = delta(&before, &after, want);
                ensure!(
                    got == count as u64 * u64::from(self.repeat),
                    "{prog:?} {scenario:?}: {got} of {} packets counted as {want:?}",
                    count as u64 * u64::from(self.repeat)
                );
                return Ok(r);
            }
            _ => {
                let frames = scenario_frames(prog, family, n, scenario, count, 0);
                if run == 0 {
                    verify(&self.checker, dp, prog, scenario, &frames)?;
                }
                let before_timed = dp.verdict_counts()?;
                let r = self.timed(prog, &frames, self.repeat)?;
                let after = dp.verdict_counts()?;
                let got = delta(&before_timed, &after, want);
                ensure!(
                    got == count as u64 * u64::from(self.repeat),
                    "{prog:?} {scenario:?}: {got} of {} packets counted as {want:?}",
                    count as u64 * u64::from(self.repeat)
                );
                return Ok(r);
            }
        };
        let after = dp.verdict_counts()?;
        let got = delta(&before, &after, want);
        ensure!(got == packets, "{prog:?} {scenario:?}: {got} of {packets} packets counted as {want:?}");
        Ok(result)
    }
}

fn delta(before: &BTreeMap<Reason, u64>, after: &BTreeMap<Reason, u64>, r: Reason) -> u64 {
    after.get(&r).copied().unwrap_or(0) - before.get(&r).copied().unwrap_or(0)
}

/// Empties both conntrack maps of the private data plane.
fn clear_flows(dp: &mut Dataplane) -> Result<()> {
    for name in [MAP_CT, MAP_CT_NEW] {
        let mut map: BpfHashMap<&mut MapData, CtKey, CtEntry> =
            BpfHashMap::try_from(dp.ebpf_mut().map_mut(name).with_context(|| format!("{name} map"))?)?;
        let keys: Vec<CtKey> = map.keys().collect::<Result<_, _>>()?;
        for k in keys {
            map.remove(&k)?;
        }
    }
    Ok(())
}

/// Checks every frame gets the scenario's verdict (one run each), for the expected reason.
fn verify(checker: &TestRunner, dp: &Dataplane, prog: Prog, scenario: Scenario, frames: &[Vec<u8>]) -> Result<()> {
    let before = dp.verdict_counts()?;
    for (k, f) in frames.iter().enumerate() {
        let r = checker.run(prog.direction(), f, 1)?;
        ensure!(
            r.pass == scenario.allowed(),
            "{prog:?} {scenario:?}: frame {k} {} (expected {})",
            if r.pass { "passed" } else { "dropped" },
            if scenario.allowed() { "pass" } else { "drop" }
        );
    }
    let after = dp.verdict_counts()?;
    let want = scenario.expected_reason();
    let got = delta(&before, &after, want);
    ensure!(
        got == frames.len() as u64,
        "{prog:?} {scenario:?}: {got} of {} frames counted as {want:?} (before {before:?}, after {after:?})",
        frames.len()
    );
    Ok(())
}

/// Times the steps of `replace_rules` (re-done here step by step, the same calls in the
/// same order) at `n` rules: into empty maps, and replacing a rule set of the same size.
fn replace_breakdown(dp: &mut Dataplane, n: usize) -> Result<ReplaceBreakdown> {
    let rules = workload::rules(n, Direction::Ingress, Family::V4, false);
    let mut out = ReplaceBreakdown { rules: n, entries: compile(1, &rules).len(), steps: vec![] };
    for rep in 0..3 {
        for case in ["into empty maps", "replacing the same size"] {
            if case == "into empty maps" {
                dp.unbind(TEST_RUN_IFINDEX)?;
                dp.collect_garbage()?;
            }
            let t0 = Instant::now();
            let policy_id = dp.fresh_policy_id()?;
            let t1 = Instant::now();
            let compiled = compile(policy_id, &rules);
            let t2 = Instant::now();
            dp.write_policy(&compiled)?;
            let t3 = Instant::now();
            dp.bind(TEST_RUN_IFINDEX, sg_common::abi::IfacePolicy { policy_id, flags: 0 })?;
            let t4 = Instant::now();
            dp.collect_garbage()?;
            let t5 = Instant::now();
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            out.steps.push((
                case,
                [ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t4, t5), ms(t0, t5)],
            ));
            // And the real function, for the record (its own total).
            if rep == 0 && case == "replacing the same size" {
                let t = Instant::now();
                replace_rules(dp, TEST_RUN_IFINDEX, &rules)?;
                out.steps.push(("replace_rules() itself", [0.0, 0.0, 0.0, 0.0, 0.0, t.elapsed().as_secs_f64() * 1e3]));
            }
        }
    }
    Ok(out)
}

impl Results {
    fn summary(&self, prog: Prog, family: Family, scenario: Scenario, n: usize, f: impl Fn(&Sample) -> f64) -> Summary {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.prog == prog && s.family == family && s.scenario == scenario && s.rules == n)
            .map(f)
            .collect();
        Summary::of(&v)
    }

    /// sg's cost minus the empty program's, per sweep, summarised.
    pub fn net(&self, prog: Prog, family: Family, scenario: Scenario, n: usize) -> Summary {
        self.summary(prog, family, scenario, n, |s| s.sg_ns - s.base_ns)
    }

    pub fn gross(&self, prog: Prog, family: Family, scenario: Scenario, n: usize) -> Summary {
        self.summary(prog, family, scenario, n, |s| s.sg_ns)
    }

    pub fn base(&self, prog: Prog, family: Family, scenario: Scenario, n: usize) -> Summary {
        self.summary(prog, family, scenario, n, |s| s.base_ns)
    }

    /// Ratio of the net cost at the largest rule count to the one at 10 rules (or the
    /// smallest count above 1), per sweep, summarised.
    pub fn ratio(&self, prog: Prog, family: Family, scenario: Scenario, gross: bool) -> Option<(usize, usize, Summary)> {
        let max = *self.opts.rules.iter().max()?;
        let reference = if self.opts.rules.contains(&10) { 10 } else { *self.opts.rules.iter().min()? };
        let pick = |n: usize| -> Vec<f64> {
            let mut v: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|s| s.prog == prog && s.family == family && s.scenario == scenario && s.rules == n)
                .collect();
            v.sort_by_key(|s| s.run);
            v.iter().map(|s| if gross { s.sg_ns } else { s.sg_ns - s.base_ns }).collect()
        };
        let (a, b) = (pick(max), pick(reference));
        let r: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        Some((max, reference, Summary::of(&r)))
    }

    pub fn markdown(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let ns: Vec<String> = o.rules.iter().map(|n| group(*n)).collect();
        let _ = writeln!(s, "{}", self.machine.markdown());
        let _ = writeln!(
            s,
            "- Command: `sudo cargo run --release -p xtask -- bench classify --runs {} --frames {} --repeat {} --cpu {} --write-docs` \
             ({:.0} s)",
            o.runs, o.frames, o.repeat, o.cpu, self.elapsed_s
        );
        let _ = writeln!(
            s,
            "- {} distinct frames per scenario, each run with `repeat` = {}; the kernel's mean per repetition \
             (whole ns) is averaged over the frames. The empty program runs on the same frame right after sg's. \
             Values: median of {} sweeps ± half the min-max range.\n",
            o.frames, o.repeat, o.runs
        );
        let _ = writeln!(s, "**sg cost minus the empty program (ns/packet)**\n");
        let _ = writeln!(s, "| program | family | scenario | {} | {} / {} |", ns.join(" | "), ns.last().unwrap(), "10");
        let _ = writeln!(s, "|---|---|---|{}---|", "---:|".repeat(ns.len()));
        for prog in Prog::ALL {
            for family in Family::ALL {
                for scenario in Scenario::ALL {
                    let cells: Vec<String> =
                        o.rules.iter().map(|&n| self.net(prog, family, scenario, n).fmt(1)).collect();
                    let ratio = self.ratio(prog, family, scenario, false).map(|(_, _, r)| r.fmt(2)).unwrap_or_default();
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} |",
                        prog.label(),
                        family.label(),
                        scenario.label(),
                        cells.join(" | "),
                        ratio
                    );
                }
            }
        }
        let _ = writeln!(s, "\n**Gross cost (sg program, ns/packet) and the empty baseline**\n");
        let _ = writeln!(s, "| program | family | scenario | {} | {} / {} (gross) |", ns.join(" | "), ns.last().unwrap(), "10");
        let _ = writeln!(s, "|---|---|---|{}---|", "---:|".repeat(ns.len()));
        for prog in Prog::ALL {
            for family in Family::ALL {
                for scenario in Scenario::ALL {
                    let cells: Vec<String> =
                        o.rules.iter().map(|&n| self.gross(prog, family, scenario, n).fmt(1)).collect();
                    let ratio = self.ratio(prog, family, scenario, true).map(|(_, _, r)| r.fmt(2)).unwrap_or_default();
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} |",
                        prog.label(),
                        family.label(),
                        scenario.label(),
                        cells.join(" | "),
                        ratio
                    );
                }
                let cells: Vec<String> = o
                    .rules
                    .iter()
                    .map(|&n| {
                        let v: Vec<f64> = Scenario::ALL.iter().map(|&sc| self.base(prog, family, sc, n).median).collect();
                        format!("{:.1}", v.iter().sum::<f64>() / v.len() as f64)
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "| {} | {} | *empty program* | {} | |",
                    match prog {
                        Prog::Tc => "empty TC (`r0 = -1; exit`)",
                        Prog::Xdp => "`sg_bench_empty` (XDP)",
                    },
                    family.label(),
                    cells.join(" | ")
                );
            }
        }
        let _ = writeln!(s, "\nInterface not managed (no policy bound: one hash lookup, then pass), gross / empty:\n");
        for prog in Prog::ALL {
            for family in Family::ALL {
                let v: Vec<f64> =
                    self.unmanaged.iter().filter(|u| u.0 == prog && u.1 == family).map(|u| u.2).collect();
                let b: Vec<f64> =
                    self.unmanaged.iter().filter(|u| u.0 == prog && u.1 == family).map(|u| u.3).collect();
                let _ = writeln!(
                    s,
                    "- {} {}: {} ns vs {} ns",
                    prog.label(),
                    family.label(),
                    Summary::of(&v).fmt(1),
                    Summary::of(&b).fmt(1)
                );
            }
        }

        // Target.
        let mut worst: Option<(f64, String)> = None;
        let mut all_met = true;
        for prog in Prog::ALL {
            for family in Family::ALL {
                for scenario in Scenario::ALL.into_iter().filter(|s| s.through_rules()) {
                    if let Some((_, _, r)) = self.ratio(prog, family, scenario, false) {
                        if r.median > 1.3 {
                            all_met = false;
                        }
                        if worst.as_ref().is_none_or(|(w, _)| r.median > *w) {
                            worst = Some((
                                r.median,
                                format!("{}, {}, {}", prog.label(), family.label(), scenario.label()),
                            ));
                        }
                    }
                }
            }
        }
        if let Some((w, what)) = worst {
            let _ = writeln!(
                s,
                "\n**Target \"cost at 5,000 rules within 1.3x of the cost at 10 rules\" (net cost): {}.** \
                 Worst ratio {:.2} ({what}).",
                if all_met { "met" } else { "NOT met" },
                w
            );
        }

        let _ = writeln!(s, "\n**Compiled entries and install time per rule set** (one direction, one family; ms: median of {} sweeps)\n", o.runs);
        let _ = writeln!(s, "| rules | family | direction | PORT_CLASS entries | CIDR_ALLOW entries | compile (ms) | `replace_rules` (ms) |");
        let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---:|");
        for st in self.installs.values() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                group(st.rules),
                st.family.label(),
                st.prog.direction(),
                st.port_entries,
                st.cidr_entries,
                Summary::of(&st.compile_ms).fmt(2),
                Summary::of(&st.replace_ms).fmt(1)
            );
        }
        let r = &self.replace;
        let _ = writeln!(
            s,
            "\n**One `replace_rules` at {} rules ({} entries), by step** (ms; 3 repetitions)\n",
            group(r.rules),
            r.entries
        );
        let _ = writeln!(s, "| case | fresh_policy_id | compile | write_policy | bind | collect_garbage | total |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        let mut cases: Vec<&'static str> = vec![];
        for (c, _) in &r.steps {
            if !cases.contains(c) {
                cases.push(c);
            }
        }
        for c in cases {
            let rows: Vec<&[f64; 6]> = r.steps.iter().filter(|(x, _)| *x == c).map(|(_, v)| v).collect();
            let cell = |i: usize| Summary::of(&rows.iter().map(|v| v[i]).collect::<Vec<_>>()).fmt(1);
            if c == "replace_rules() itself" {
                let _ = writeln!(s, "| {c} | | | | | | {} |", cell(5));
            } else {
                let _ = writeln!(s, "| {c} | {} | {} | {} | {} | {} | {} |", cell(0), cell(1), cell(2), cell(3), cell(4), cell(5));
            }
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "machine": { "cpu": self.machine.cpu_model, "cpus": self.machine.cpus, "kernel": self.machine.kernel, "date": self.machine.date },
            "frames": self.opts.frames, "repeat": self.opts.repeat, "runs": self.opts.runs,
            "samples": self.samples.iter().map(|s| serde_json::json!({
                "prog": format!("{:?}", s.prog), "family": s.family.label(), "scenario": format!("{:?}", s.scenario),
                "rules": s.rules, "run": s.run, "sg_ns": s.sg_ns, "base_ns": s.base_ns,
            })).collect::<Vec<_>>(),
        })
    }

    /// A hand-written SVG line chart: net ns/packet against rules (log x), one panel
    /// per program, one line per scenario and family.
    pub fn svg(&self) -> String {
        let (pw, ph) = (440.0, 300.0);
        let (ml, mr, mt, mb) = (58.0, 16.0, 40.0, 46.0);
        let legend_h = 70.0;
        let width = 2.0 * (ml + pw + mr);
        let height = mt + ph + mb + legend_h;
        let xs: Vec<f64> = self.opts.rules.iter().map(|&n| (n as f64).log10()).collect();
        let (xmin, xmax) = (xs.iter().cloned().fold(f64::MAX, f64::min), xs.iter().cloned().fold(f64::MIN, f64::max));
        let xmax = if xmax > xmin { xmax } else { xmin + 1.0 };
        let mut ymax: f64 = 0.0;
        for prog in Prog::ALL {
            for family in Family::ALL {
                for scenario in Scenario::ALL {
                    for &n in &self.opts.rules {
                        ymax = ymax.max(self.net(prog, family, scenario, n).max);
                    }
                }
            }
        }
        let step = nice_step(ymax / 5.0);
        let ymax = (ymax / step).ceil().max(1.0) * step;
        let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="18" text-anchor="middle" font-size="14" font-weight="bold">sg classification cost minus an empty program (BPF_PROG_TEST_RUN, ns/packet)</text>"#,
            width / 2.0
        );
        for (pi, prog) in Prog::ALL.iter().enumerate() {
            let ox = pi as f64 * (ml + pw + mr) + ml;
            let oy = mt;
            let px = |x: f64| ox + (x - xmin) / (xmax - xmin) * pw;
            let py = |y: f64| oy + ph - (y / ymax) * ph;
            let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#, ox + pw / 2.0, oy - 8.0, prog.label());
            // grid and y axis
            let mut y = 0.0;
            while y <= ymax + 1e-9 {
                let _ = writeln!(s, r##"<line x1="{ox}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/>"##, py(y), ox + pw);
                let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, ox - 6.0, py(y) + 4.0, trim_num(y));
                y += step;
            }
            for (i, &n) in self.opts.rules.iter().enumerate() {
                let x = px(xs[i]);
                let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{oy}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/>"##, oy + ph);
                let _ = writeln!(s, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, oy + ph + 16.0, group(n));
            }
            let _ = writeln!(s, r#"<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
            let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">rules per instance (log scale)</text>"#, ox + pw / 2.0, oy + ph + 34.0);
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">ns/packet</text>"#,
                ox - 42.0,
                oy + ph / 2.0,
                ox - 42.0,
                oy + ph / 2.0
            );
            for (si, scenario) in Scenario::ALL.iter().enumerate() {
                for family in Family::ALL {
                    let pts: Vec<String> = self
                        .opts
                        .rules
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| format!("{:.1},{:.1}", px(xs[i]), py(self.net(*prog, family, *scenario, n).median)))
                        .collect();
                    let dash = if family == Family::V6 { r#" stroke-dasharray="6 4""# } else { "" };
                    let _ = writeln!(
                        s,
                        r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                        pts.join(" "),
                        colors[si]
                    );
                    for p in &pts {
                        let (x, y) = p.split_once(',').expect("x,y");
                        let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{}"/>"#, colors[si]);
                    }
                }
            }
        }
        // legend
        let ly = mt + ph + mb + 14.0;
        for (si, scenario) in Scenario::ALL.iter().enumerate() {
            let lx = ml + si as f64 * 215.0;
            let _ = writeln!(s, r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"/>"#, lx + 26.0, colors[si]);
            let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, lx + 32.0, ly + 4.0, scenario.label());
        }
        let ly2 = ly + 22.0;
        let _ = writeln!(s, r##"<line x1="{ml}" y1="{ly2}" x2="{}" y2="{ly2}" stroke="#444" stroke-width="2"/>"##, ml + 26.0);
        let _ = writeln!(s, r#"<text x="{}" y="{}">IPv4</text>"#, ml + 32.0, ly2 + 4.0);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{ly2}" x2="{}" y2="{ly2}" stroke="#444" stroke-width="2" stroke-dasharray="6 4"/>"##,
            ml + 215.0,
            ml + 241.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">IPv6</text>"#, ml + 247.0, ly2 + 4.0);
        let _ = writeln!(
            s,
            r#"<text x="{ml}" y="{}" font-size="11">{} distinct frames x repeat {} per point; median of {} sweeps; {}; Linux {}</text>"#,
            ly2 + 24.0,
            self.opts.frames,
            self.opts.repeat,
            self.opts.runs,
            self.machine.date,
            self.machine.kernel
        );
        s.push_str("</svg>\n");
        s
    }
}

/// 5000 -> "5,000".
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

fn trim_num(v: f64) -> String {
    if v.fract().abs() < 1e-9 { format!("{v:.0}") } else { format!("{v:.1}") }
}
