//! `xtask bench classify`: cost per packet of sg's programs under BPF_PROG_TEST_RUN,
//! against rule count, minus an empty program measured on the same frames.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp, XdpMode};
use aya_obj::programs::XdpAttachType;
use sg_common::abi::Reason;
use sg_common::model::Direction;
use sg_daemon::apply::replace_rules;
use sg_daemon::compile::compile;
use sg_daemon::dataplane::{Capacity, Dataplane};
use sg_daemon::testrun::{TEST_RUN_IFINDEX, TestRunner};

use crate::stats::Summary;
use crate::sys::{self, CpuPin, Machine, NetnsGuard, PinDir};
use crate::workload::{self, Family, L4, Shape};

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
    /// Scenarios to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "first,last,spread,none,spread-cold,new-flow,established"
    )]
    pub scenarios: Vec<Scenario>,
    /// Passes over fresh frames for the one-run-per-frame (cold) scenarios.
    #[arg(long, default_value_t = 4)]
    pub cold_passes: usize,
    /// Skip the checks of sg's verdict counters (for experimental builds that do not count).
    #[arg(long)]
    pub no_verify: bool,
    /// Rule-set shape (`--write-docs` needs the default, `ports`).
    #[arg(long, value_enum, default_value = "ports")]
    pub shape: Shape,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Scenario {
    /// Untracked TCP ACKs (no flow, so every packet goes through the rules; they open
    /// no flow either) matching rule 0.
    First,
    /// ... matching rule N-1.
    Last,
    /// ... frame k matching rule (97 k mod N).
    Spread,
    /// ... ports of rules, remote outside every rule's network.
    #[value(name = "none")]
    NoMatch,
    /// As `spread`, but each frame run once, over fresh frames: the lookups do not find
    /// their trie nodes in cache from the previous repetition.
    SpreadCold,
    /// TCP SYNs of fresh flows (spread), each run once: rules, then a new conntrack entry.
    NewFlow,
    /// TCP ACKs of established flows (spread): decided by conntrack, rules not consulted.
    Established,
}

impl Scenario {
    pub fn label(self) -> &'static str {
        match self {
            Scenario::First => "first rule matches",
            Scenario::Last => "last rule matches",
            Scenario::Spread => "spread over all rules",
            Scenario::NoMatch => "no rule matches",
            Scenario::SpreadCold => "spread, one run per frame",
            Scenario::NewFlow => "new flow (SYN), one run per frame",
            Scenario::Established => "established flow (conntrack hit)",
        }
    }
    /// One run per frame over fresh frames, instead of `repeat` runs of each.
    pub fn cold(self) -> bool {
        matches!(self, Scenario::SpreadCold | Scenario::NewFlow)
    }
    /// The scenarios whose packets are decided by the rules (the target applies to them).
    pub fn through_rules(self) -> bool {
        self != Scenario::Established
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
        Scenario::Spread | Scenario::SpreadCold | Scenario::NewFlow | Scenario::Established => {
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
#[allow(clippy::too_many_arguments)]
fn scenario_frames(
    shape: Shape,
    prog: Prog,
    family: Family,
    n: usize,
    scenario: Scenario,
    count: usize,
    pass: usize,
) -> Vec<Vec<u8>> {
    let flags = if scenario == Scenario::NewFlow { workload::SYN } else { workload::ACK };
    // Pass 0 is the established flows' port range; cold passes use fresh ports.
    (0..count)
        .map(|k| {
            let (remote, rule) = scenario_target(family, n, scenario, k);
            let sport = client_port(k, pass, count);
            workload::frame(prog.direction(), remote, sport, shape.port(rule), L4::Tcp(flags))
        })
        .collect()
}

/// SYN, SYN-ACK, ACK of the flows of `scenario_frames(.., Established, ..)`.
fn handshake_frames(
    shape: Shape,
    prog: Prog,
    family: Family,
    n: usize,
    count: usize,
) -> Vec<[(Direction, Vec<u8>); 3]> {
    let dir = prog.direction();
    let back = match dir {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    (0..count)
        .map(|k| {
            let (remote, rule) = scenario_target(family, n, Scenario::Established, k);
            let (c, p) = (client_port(k, 0, count), shape.port(rule));
            [
                (dir, workload::frame(dir, remote, c, p, L4::Tcp(workload::SYN))),
                (back, workload::frame(back, remote, p, c, L4::Tcp(workload::SYN | workload::ACK))),
                (dir, workload::frame(dir, remote, c, p, L4::Tcp(workload::ACK))),
            ]
        })
        .collect()
}

/// A named selection of scenarios (table groups, plot columns).
type ScenarioGroup = (&'static str, fn(Scenario) -> bool);

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
    /// Entries per map: PORT_CLASS_EXACT, PORT_CLASS, CIDR_ALLOW_EXACT, CIDR_ALLOW.
    pub entries: [usize; 4],
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
    /// ns per call of a few BPF helpers on this machine.
    pub helper_call_ns: Vec<(&'static str, Summary)>,
    pub elapsed_s: f64,
}

pub fn run(opts: Opts) -> Result<Results> {
    ensure!(
        !opts.write_docs || opts.shape == Shape::Ports,
        "--write-docs records the default rule set (--shape ports); other shapes print their tables only"
    );
    sys::require_root()?;
    ensure!(
        !opts.rules.is_empty() && opts.rules.iter().all(|&n| (1..=65_536).contains(&n)),
        "rule counts 1-65536"
    );
    ensure!(opts.frames >= 1 && opts.frames <= 60_000, "--frames 1-60000");
    let machine = Machine::probe();
    let started = Instant::now();
    let pins = PinDir::new("classify")?;
    // A private namespace: test runs present frames on its loopback (ifindex 1), and the
    // dummy interfaces that keep the XDP programs in the dispatcher live there.
    let _ns = NetnsGuard::create_and_enter(&format!("{}-classify-{}", sys::PREFIX, std::process::id()))?;
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
    let mut base_xdp = Xdp::from_pin(&empty_xdp_pin, XdpAttachType::Interface)?;
    let mut sg_xdp = Xdp::from_pin(pins.path.join("prog_egress"), XdpAttachType::Interface)?;
    // Attached to an idle veth pair, so test runs do not pay for dispatcher updates.
    let (park_a, park_b) = sys::parking_veth("sgxpark0", "sgxpark1")?;
    base_xdp.attach(park_a, XdpMode::Default).context("parking sg_bench_empty on a veth")?;
    sg_xdp.attach(park_b, XdpMode::Default).context("parking prog_egress on a veth")?;
    let base_xdp = Runner::Xdp(base_xdp);
    let sg_xdp = Runner::Xdp(sg_xdp);
    let base_tc = Runner::Tc(SchedClassifier::from_pin(&empty_tc_pin)?);
    let sg_tc = Runner::Tc(SchedClassifier::from_pin(pins.path.join("prog_ingress"))?);
    let checker = TestRunner::open(&pins.path)?;

    let _pin = CpuPin::new(opts.cpu)?;
    let helper_call_ns = helper_call_cost(&pins)?;
    let m = Measurer {
        sg_xdp,
        sg_tc,
        base_xdp,
        base_tc,
        checker,
        repeat: opts.repeat,
        cold_passes: opts.cold_passes.max(1),
        verify: !opts.no_verify,
        shape: opts.shape,
    };
    let mut samples = Vec::new();
    let mut installs: BTreeMap<(usize, Family, Prog), InstallStat> = BTreeMap::new();
    let mut unmanaged = Vec::new();

    for run in 0..opts.runs {
        eprintln!("classify: sweep {}/{} (load {})", run + 1, opts.runs, sys::loadavg());
        for &n in &opts.rules {
            for family in Family::ALL {
                for prog in Prog::ALL {
                    let rules = workload::shaped_rules(n, prog.direction(), family, opts.shape);
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
                        entries: [
                            compiled.port_exact.len(),
                            compiled.port_classes.len(),
                            compiled.cidr_exact.len(),
                            compiled.cidrs.len(),
                        ],
                        compile_ms: vec![],
                        replace_ms: vec![],
                    });
                    stat.compile_ms.push(compile_ms);
                    stat.replace_ms.push(replace_ms);
                    if run == 0 {
                        let stored = dp.entry_counts()?;
                        ensure!(
                            stored == (compiled.port_entries(), compiled.cidr_entries()),
                            "stored entries {stored:?} differ from the compiled ones"
                        );
                    }
                    for &scenario in &opts.scenarios {
                        let (sg_ns, base_ns) =
                            m.scenario(&mut dp, prog, family, n, scenario, opts.frames, run)?;
                        samples.push(Sample { prog, family, scenario, rules: n, run, sg_ns, base_ns });
                    }
                }
            }
            eprintln!("  {n} rules done ({:.0} s)", started.elapsed().as_secs_f64());
        }
        // The programs on an interface no policy is bound to: one array word read, then pass.
        dp.unbind(TEST_RUN_IFINDEX)?;
        for prog in Prog::ALL {
            for family in Family::ALL {
                let frames = scenario_frames(opts.shape, prog, family, 1, Scenario::First, opts.frames, 0);
                let (a, b) = m.timed(prog, &frames, opts.repeat)?;
                unmanaged.push((prog, family, a, b));
            }
        }
    }

    let replace = replace_breakdown(&mut dp, *opts.rules.iter().max().expect("non-empty"))?;
    drop(m);
    drop(dp);
    drop(pins);
    Ok(Results {
        opts,
        machine,
        samples,
        installs,
        unmanaged,
        replace,
        helper_call_ns,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// What BPF helper calls cost on this machine: an XDP program calling the helper ten
/// times against one calling nothing (3 x 1,000,000 runs each), per helper.
fn helper_call_cost(pins: &PinDir) -> Result<Vec<(&'static str, Summary)>> {
    let p0 = pins.path.join("bench_calls0");
    sys::load_helper_calls(0, 0, &p0)?;
    let r0 = Runner::Xdp(Xdp::from_pin(&p0, XdpAttachType::Interface)?);
    let frame = [0u8; 60];
    let mut out = [0u8; 128];
    let mut res = Vec::new();
    for (name, helper) in [
        ("bpf_get_prandom_u32", sys::HELPER_PRANDOM_U32),
        ("bpf_ktime_get_ns", sys::HELPER_KTIME_GET_NS),
        ("bpf_ktime_get_coarse_ns (sg's clock)", sys::HELPER_KTIME_GET_COARSE_NS),
        ("bpf_jiffies64 (inlined by the verifier)", sys::HELPER_JIFFIES64),
    ] {
        let p = pins.path.join(format!("bench_calls_{helper}"));
        sys::load_helper_calls(helper, 10, &p)?;
        let r10 = Runner::Xdp(Xdp::from_pin(&p, XdpAttachType::Interface)?);
        let mut v = Vec::new();
        for _ in 0..3 {
            let a = r0.run(&frame, 1_000_000, &mut out)?.1;
            let b = r10.run(&frame, 1_000_000, &mut out)?.1;
            v.push((f64::from(b) - f64::from(a)) / 10.0);
        }
        res.push((name, Summary::of(&v)));
    }
    Ok(res)
}

struct Measurer {
    sg_xdp: Runner,
    sg_tc: Runner,
    base_xdp: Runner,
    base_tc: Runner,
    checker: TestRunner,
    repeat: u32,
    cold_passes: usize,
    verify: bool,
    shape: Shape,
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

    #[allow(clippy::too_many_arguments)]
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
        dp.clear_flows()?;
        let want = scenario.expected_reason();
        if scenario == Scenario::Established {
            for (k, steps) in handshake_frames(self.shape, prog, family, n, count).iter().enumerate() {
                for (dir, f) in steps {
                    let r = self.checker.run(*dir, f, 1)?;
                    ensure!(r.pass, "{prog:?} handshake of flow {k} dropped");
                }
            }
        } else if run == 0 && !scenario.cold() && self.verify {
            verify(
                &self.checker,
                dp,
                prog,
                scenario,
                &scenario_frames(self.shape, prog, family, n, scenario, count, 0),
            )?;
        }
        let before = dp.verdict_counts()?;
        let (result, packets) = if scenario.cold() {
            // Fresh tuples, one run each; the tracker is emptied between passes so every
            // SYN opens a flow.
            let (mut a, mut b) = (0.0, 0.0);
            for pass in 0..self.cold_passes {
                if scenario == Scenario::NewFlow && pass > 0 {
                    let mid = dp.verdict_counts()?;
                    dp.clear_flows()?;
                    ensure!(dp.verdict_counts()? == mid, "clearing flows changed the counters");
                }
                let frames = scenario_frames(
                    self.shape,
                    prog,
                    family,
                    n,
                    scenario,
                    count,
                    1 + run * self.cold_passes + pass,
                );
                let (x, y) = self.timed(prog, &frames, 1)?;
                a += x;
                b += y;
            }
            let p = self.cold_passes as f64;
            ((a / p, b / p), (self.cold_passes * count) as u64)
        } else {
            let frames = scenario_frames(self.shape, prog, family, n, scenario, count, 0);
            (self.timed(prog, &frames, self.repeat)?, count as u64 * u64::from(self.repeat))
        };
        if self.verify {
            let after = dp.verdict_counts()?;
            let got = delta(&before, &after, want);
            ensure!(got == packets, "{prog:?} {scenario:?}: {got} of {packets} packets counted as {want:?}");
        }
        Ok(result)
    }
}

fn delta(before: &BTreeMap<Reason, u64>, after: &BTreeMap<Reason, u64>, r: Reason) -> u64 {
    after.get(&r).copied().unwrap_or(0) - before.get(&r).copied().unwrap_or(0)
}

/// Checks every frame gets the scenario's verdict (one run each), for the expected reason.
fn verify(
    checker: &TestRunner,
    dp: &Dataplane,
    prog: Prog,
    scenario: Scenario,
    frames: &[Vec<u8>],
) -> Result<()> {
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
            dp.bind(TEST_RUN_IFINDEX, policy_id, 0)?;
            let t4 = Instant::now();
            dp.collect_garbage()?;
            let t5 = Instant::now();
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            out.steps.push((case, [ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t4, t5), ms(t0, t5)]));
            // And the real function, for the record (its own total).
            if rep == 0 && case == "replacing the same size" {
                let t = Instant::now();
                replace_rules(dp, TEST_RUN_IFINDEX, &rules)?;
                out.steps.push((
                    "replace_rules() itself",
                    [0.0, 0.0, 0.0, 0.0, 0.0, t.elapsed().as_secs_f64() * 1e3],
                ));
            }
        }
    }
    Ok(out)
}

impl Results {
    fn select(&self, prog: Prog, family: Family, scenario: Scenario, n: usize) -> Vec<&Sample> {
        let mut v: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.prog == prog && s.family == family && s.scenario == scenario && s.rules == n)
            .collect();
        v.sort_by_key(|s| s.run);
        v
    }

    /// sg's cost minus the empty program's, per sweep, summarised.
    pub fn net(&self, prog: Prog, family: Family, scenario: Scenario, n: usize) -> Summary {
        Summary::of(
            &self.select(prog, family, scenario, n).iter().map(|s| s.sg_ns - s.base_ns).collect::<Vec<_>>(),
        )
    }

    pub fn gross(&self, prog: Prog, family: Family, scenario: Scenario, n: usize) -> Summary {
        Summary::of(&self.select(prog, family, scenario, n).iter().map(|s| s.sg_ns).collect::<Vec<_>>())
    }

    pub fn base(&self, prog: Prog, family: Family, scenario: Scenario, n: usize) -> Summary {
        Summary::of(&self.select(prog, family, scenario, n).iter().map(|s| s.base_ns).collect::<Vec<_>>())
    }

    /// The rule counts the target compares: the largest, and 10 (else the smallest).
    fn target_counts(&self) -> (usize, usize) {
        let max = self.opts.rules.iter().copied().max().unwrap_or(1);
        let reference = if self.opts.rules.contains(&10) {
            10
        } else {
            self.opts.rules.iter().copied().min().unwrap_or(1)
        };
        (max, reference)
    }

    /// Per-sweep ratio of the cost at the largest rule count to the cost at the
    /// reference count (net, or gross), summarised.
    pub fn ratio(&self, prog: Prog, family: Family, scenario: Scenario, gross: bool) -> Summary {
        let (max, reference) = self.target_counts();
        let cost = |s: &&Sample| if gross { s.sg_ns } else { s.sg_ns - s.base_ns };
        let a: Vec<f64> = self.select(prog, family, scenario, max).iter().map(cost).collect();
        let b: Vec<f64> = self.select(prog, family, scenario, reference).iter().map(cost).collect();
        Summary::of(&a.iter().zip(&b).map(|(x, y)| x / y).collect::<Vec<_>>())
    }

    fn cost_table(&self, s: &mut String, gross: bool) {
        let o = &self.opts;
        let (max, reference) = self.target_counts();
        let ns: Vec<String> = o.rules.iter().map(|n| group(*n)).collect();
        let _ = writeln!(
            s,
            "| program | family | scenario | {} | {} / {} |",
            ns.join(" | "),
            group(max),
            group(reference)
        );
        let _ = writeln!(s, "|---|---|---|{}---:|", "---:|".repeat(ns.len()));
        for prog in Prog::ALL {
            for family in Family::ALL {
                for &scenario in &o.scenarios {
                    let cells: Vec<String> = o
                        .rules
                        .iter()
                        .map(|&n| {
                            if gross {
                                self.gross(prog, family, scenario, n)
                            } else {
                                self.net(prog, family, scenario, n)
                            }
                            .fmt(1)
                        })
                        .collect();
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} |",
                        prog.label(),
                        family.label(),
                        scenario.label(),
                        cells.join(" | "),
                        self.ratio(prog, family, scenario, gross).fmt(2)
                    );
                }
                if gross {
                    let cells: Vec<String> = o
                        .rules
                        .iter()
                        .map(|&n| {
                            let hot: Vec<f64> = o
                                .scenarios
                                .iter()
                                .filter(|sc| !sc.cold())
                                .map(|&sc| self.base(prog, family, sc, n).median)
                                .collect();
                            let cold: Vec<f64> = o
                                .scenarios
                                .iter()
                                .filter(|sc| sc.cold())
                                .map(|&sc| self.base(prog, family, sc, n).median)
                                .collect();
                            let mean = |v: &[f64]| {
                                if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
                            };
                            format!("{:.1} / {:.1}", mean(&hot), mean(&cold))
                        })
                        .collect();
                    let _ = writeln!(
                        s,
                        "| {} | {} | *empty program, repeated / one run* | {} | |",
                        match prog {
                            Prog::Tc => "empty TC (`r0 = -1; exit`)",
                            Prog::Xdp => "`sg_bench_empty` (XDP)",
                        },
                        family.label(),
                        cells.join(" | ")
                    );
                }
            }
        }
    }

    pub fn markdown(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let (max, reference) = self.target_counts();
        let _ = writeln!(s, "{}", self.machine.markdown());
        let _ = writeln!(
            s,
            "- Cost of one BPF helper call on this machine (XDP program calling it 10 times vs not at all): {}.",
            self.helper_call_ns
                .iter()
                .map(|(n, v)| format!("`{n}` {} ns", v.fmt(1)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "- Command: `sudo cargo run --release -p xtask -- bench classify --runs {} --frames {} --repeat {} --cold-passes {} --cpu {} --write-docs` \
             ({:.0} s)",
            o.runs, o.frames, o.repeat, o.cold_passes, o.cpu, self.elapsed_s
        );
        let _ = writeln!(
            s,
            "- Rule set of N rules: rule i = tcp, destination port 1000+i, remote 10.(i/256).(i%256).0/24 or \
             2001:db8:0:i::/64; ingress rules for the TC program, egress rules for the XDP program; installed with \
             `replace_rules` on a private data plane. Frames: 60-byte TCP, {} distinct tuples per scenario (remote \
             host and client port vary). Repeated scenarios run each frame `repeat` = {} times and average the \
             kernel's mean per repetition (whole ns) over the frames; one-run scenarios run each of {} x {} fresh \
             frames once. The empty program runs on the same frame right after sg's; the tables give sg minus empty. \
             Every packet's verdict reason is checked against sg's counters. Values: median of {} sweeps ± half the \
             min-max range.\n",
            o.frames, o.repeat, o.cold_passes, o.frames, o.runs
        );
        let _ = writeln!(s, "**sg cost minus the empty program (ns/packet)**\n");
        self.cost_table(&mut s, false);
        let _ = writeln!(s, "\n**Gross cost (sg program, ns/packet) and the empty baselines**\n");
        self.cost_table(&mut s, true);

        let _ = writeln!(
            s,
            "\nInterface not managed (no policy bound: one array word read, then pass), gross / empty, ns:\n"
        );
        for prog in Prog::ALL {
            for family in Family::ALL {
                let pick = |i: usize| -> Vec<f64> {
                    self.unmanaged
                        .iter()
                        .filter(|u| u.0 == prog && u.1 == family)
                        .map(|u| if i == 0 { u.2 } else { u.3 })
                        .collect()
                };
                let _ = writeln!(
                    s,
                    "- {} {}: {} vs {}",
                    prog.label(),
                    family.label(),
                    Summary::of(&pick(0)).fmt(1),
                    Summary::of(&pick(1)).fmt(1)
                );
            }
        }

        // Target, per group of scenarios.
        let groups: [ScenarioGroup; 2] = [
            ("packets decided by the rules, repeated frames", |sc| sc.through_rules() && !sc.cold()),
            ("packets decided by the rules, one run per frame", |sc| sc.through_rules() && sc.cold()),
        ];
        let _ = writeln!(
            s,
            "\n**Target \"cost at {} rules within 1.3x of the cost at {} rules\"** (net cost, per-sweep ratio, median):\n",
            group(max),
            group(reference)
        );
        for (name, pred) in groups {
            let mut worst: Option<(f64, String)> = None;
            for prog in Prog::ALL {
                for family in Family::ALL {
                    for &sc in o.scenarios.iter().filter(|&&sc| pred(sc)) {
                        let r = self.ratio(prog, family, sc, false);
                        if worst.as_ref().is_none_or(|(w, _)| r.median > *w) {
                            worst = Some((
                                r.median,
                                format!("{}, {}, {}", prog.label(), family.label(), sc.label()),
                            ));
                        }
                    }
                }
            }
            if let Some((w, what)) = worst {
                let _ = writeln!(
                    s,
                    "- {name}: **{}** (worst ratio {w:.2}: {what})",
                    if w <= 1.3 { "met" } else { "NOT met" }
                );
            }
        }

        let _ = writeln!(
            s,
            "\n**Compiled entries and install time per rule set** (one direction, one family; ms: median of {} sweeps)\n",
            o.runs
        );
        let _ = writeln!(
            s,
            "| rules | family | direction | entries: PORT_CLASS_EXACT / PORT_CLASS (trie) / CIDR_ALLOW_EXACT / CIDR_ALLOW (trie) | compile (ms) | `replace_rules` (ms) |"
        );
        let _ = writeln!(s, "|---:|---|---|---:|---:|---:|");
        for st in self.installs.values() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} / {} / {} / {} | {} | {} |",
                group(st.rules),
                st.family.label(),
                st.prog.direction(),
                st.entries[0],
                st.entries[1],
                st.entries[2],
                st.entries[3],
                Summary::of(&st.compile_ms).fmt(2),
                Summary::of(&st.replace_ms).fmt(1)
            );
        }
        let r = &self.replace;
        let _ = writeln!(
            s,
            "\n**One `replace_rules` at {} rules ({} entries), by step** (ms, median of 3 ± half range; the same calls \
             `replace_rules` makes, timed one by one)\n",
            group(r.rules),
            r.entries
        );
        let _ = writeln!(
            s,
            "| case | fresh_policy_id | compile | write_policy | bind | collect_garbage | total |"
        );
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
                let _ = writeln!(s, "| `replace_rules()` itself, replacing | | | | | | {} |", cell(5));
            } else {
                let _ = writeln!(
                    s,
                    "| {c} | {} | {} | {} | {} | {} | {} |",
                    cell(0),
                    cell(1),
                    cell(2),
                    cell(3),
                    cell(4),
                    cell(5)
                );
            }
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "machine": { "cpu": self.machine.cpu_model, "cpus": self.machine.cpus, "kernel": self.machine.kernel, "date": self.machine.date },
            "frames": self.opts.frames, "repeat": self.opts.repeat, "runs": self.opts.runs, "cold_passes": self.opts.cold_passes,
            "helper_call_ns": self.helper_call_ns.iter().map(|(n, v)| (n.to_string(), v.median)).collect::<BTreeMap<_, _>>(),
            "samples": self.samples.iter().map(|s| serde_json::json!({
                "prog": format!("{:?}", s.prog), "family": s.family.label(), "scenario": format!("{:?}", s.scenario),
                "rules": s.rules, "run": s.run, "sg_ns": s.sg_ns, "base_ns": s.base_ns,
            })).collect::<Vec<_>>(),
            "unmanaged": self.unmanaged.iter().map(|u| serde_json::json!({
                "prog": format!("{:?}", u.0), "family": u.1.label(), "sg_ns": u.2, "base_ns": u.3,
            })).collect::<Vec<_>>(),
        })
    }

    /// A hand-written SVG: net ns/packet against rules (log x). Panels: one row per
    /// program; left the repeated-frame scenarios, right the one-run scenarios (their
    /// scale is several times larger). IPv4 solid, IPv6 dashed.
    pub fn svg(&self) -> String {
        let (pw, ph) = (400.0, 240.0);
        let (ml, mr, mt, mb) = (60.0, 20.0, 56.0, 52.0);
        let cols: [ScenarioGroup; 2] =
            [("repeated frames", |sc| !sc.cold()), ("one run per frame", |sc| sc.cold())];
        let legend_h = 84.0;
        let width = 2.0 * (ml + pw + mr);
        let height = 2.0 * (mt + ph + mb) + legend_h;
        let xs: Vec<f64> = self.opts.rules.iter().map(|&n| (n as f64).log10()).collect();
        let xmin = xs.iter().cloned().fold(f64::MAX, f64::min);
        let xmax = xs.iter().cloned().fold(f64::MIN, f64::max);
        let xmax = if xmax > xmin { xmax } else { xmin + 1.0 };
        let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];
        let color = |sc: Scenario| {
            palette[self.opts.scenarios.iter().position(|&x| x == sc).unwrap_or(0) % palette.len()]
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="15" font-weight="bold">sg cost per packet minus an empty program (BPF_PROG_TEST_RUN, ns)</text>"#,
            width / 2.0
        );
        for (row, prog) in Prog::ALL.iter().enumerate() {
            for (col, (col_name, pred)) in cols.iter().enumerate() {
                let scs: Vec<Scenario> = self.opts.scenarios.iter().copied().filter(|&sc| pred(sc)).collect();
                let ox = col as f64 * (ml + pw + mr) + ml;
                let oy = row as f64 * (mt + ph + mb) + mt;
                let mut ymax: f64 = 0.0;
                for &sc in &scs {
                    for family in Family::ALL {
                        for &n in &self.opts.rules {
                            ymax = ymax.max(self.net(*prog, family, sc, n).median);
                        }
                    }
                }
                let step = nice_step(ymax / 5.0);
                let ymax = (ymax / step).ceil().max(1.0) * step;
                let px = |x: f64| ox + (x - xmin) / (xmax - xmin) * pw;
                let py = |y: f64| oy + ph - (y.max(0.0) / ymax) * ph;
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}: {}</text>"#,
                    ox + pw / 2.0,
                    oy - 10.0,
                    prog.label(),
                    col_name
                );
                let mut y = 0.0;
                while y <= ymax + 1e-9 {
                    let _ = writeln!(
                        s,
                        r##"<line x1="{ox}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/>"##,
                        py(y),
                        ox + pw
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                        ox - 6.0,
                        py(y) + 4.0,
                        trim_num(y)
                    );
                    y += step;
                }
                for (i, &n) in self.opts.rules.iter().enumerate() {
                    let x = px(xs[i]);
                    let _ = writeln!(
                        s,
                        r##"<line x1="{x:.1}" y1="{oy}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/>"##,
                        oy + ph
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                        oy + ph + 16.0,
                        group(n)
                    );
                }
                let _ = writeln!(
                    s,
                    r#"<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle">rules per instance (log scale)</text>"#,
                    ox + pw / 2.0,
                    oy + ph + 34.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{0}" y="{1}" text-anchor="middle" transform="rotate(-90 {0} {1})">ns/packet</text>"#,
                    ox - 44.0,
                    oy + ph / 2.0
                );
                for &sc in &scs {
                    for family in Family::ALL {
                        let pts: Vec<(f64, f64)> = self
                            .opts
                            .rules
                            .iter()
                            .enumerate()
                            .map(|(i, &n)| (px(xs[i]), py(self.net(*prog, family, sc, n).median)))
                            .collect();
                        let dash = if family == Family::V6 { r#" stroke-dasharray="6 4""# } else { "" };
                        let line: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                        let _ = writeln!(
                            s,
                            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                            line.join(" "),
                            color(sc)
                        );
                        for (x, y) in &pts {
                            let _ = writeln!(
                                s,
                                r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{}"/>"#,
                                color(sc)
                            );
                        }
                    }
                }
            }
        }
        let ly = 2.0 * (mt + ph + mb) + 8.0;
        let mut lx = ml;
        for (i, &sc) in self.opts.scenarios.iter().enumerate() {
            if i == 4 {
                lx = ml;
            }
            let y = if i < 4 { ly } else { ly + 20.0 };
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/>"#,
                lx + 24.0,
                color(sc)
            );
            let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, lx + 30.0, y + 4.0, sc.label());
            lx += 30.0 + 7.0 * sc.label().len() as f64 + 24.0;
        }
        let y = ly + 40.0;
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{y}" x2="{}" y2="{y}" stroke="#444" stroke-width="2"/>"##,
            ml + 24.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">IPv4</text>"#, ml + 30.0, y + 4.0);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#444" stroke-width="2" stroke-dasharray="6 4"/>"##,
            ml + 80.0,
            ml + 104.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">IPv6</text>"#, ml + 110.0, y + 4.0);
        let _ = writeln!(
            s,
            r#"<text x="{ml}" y="{}" font-size="11">Median of {} sweeps. Repeated: {} frames x repeat {}; one run: {} x {} fresh frames, each run once. {}; Linux {}.</text>"#,
            y + 24.0,
            self.opts.runs,
            self.opts.frames,
            self.opts.repeat,
            self.opts.cold_passes,
            self.opts.frames,
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
        if i > 0 && (s.len() - i).is_multiple_of(3) {
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
