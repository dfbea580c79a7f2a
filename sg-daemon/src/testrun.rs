//! Adapter: run the pinned programs on a frame with `BPF_PROG_TEST_RUN`, for verdict
//! tests and benchmarks. Runs use the calling thread's network namespace; without a
//! context the kernel presents the frame on the loopback device (ifindex 1), so a test
//! binds ifindex 1 to a policy in its *own* pin directory's maps and never attaches.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use sg_common::model::Direction;

/// Loopback's ifindex in every network namespace: what test runs present frames on.
pub const TEST_RUN_IFINDEX: u32 = 1;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const TC_ACT_SHOT: u32 = 2;

/// The two pinned programs, opened for test runs.
pub struct TestRunner {
    egress: Xdp,
    ingress: SchedClassifier,
}

/// Outcome of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunResult {
    pub pass: bool,
    /// Mean time per repetition as the kernel measured it.
    pub duration: Duration,
}

impl TestRunner {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let egress = Xdp::from_pin(pin_dir.join("prog_egress"), aya_obj::programs::XdpAttachType::Interface)
            .context("opening pinned XDP program")?;
        let ingress =
            SchedClassifier::from_pin(pin_dir.join("prog_ingress")).context("opening pinned TC program")?;
        Ok(TestRunner { egress, ingress })
    }

    /// Runs the program of `direction` on `frame` (at least 14 bytes: the kernel
    /// refuses shorter test input) `repeat` times.
    pub fn run(&self, direction: Direction, frame: &[u8], repeat: u32) -> Result<RunResult> {
        if frame.len() < 14 {
            bail!("test-run frames must hold an Ethernet header (14 bytes), got {}", frame.len());
        }
        let mut out = vec![0u8; frame.len() + 256];
        let opts =
            TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..Default::default() };
        let (ret, duration) = match direction {
            Direction::Egress => {
                let r = self.egress.test_run(opts).context("BPF_PROG_TEST_RUN (XDP)")?;
                (r.return_value, r.duration)
            }
            Direction::Ingress => {
                let r = self.ingress.test_run(opts).context("BPF_PROG_TEST_RUN (TC)")?;
                (r.return_value, r.duration)
            }
        };
        let pass = match (direction, ret) {
            (Direction::Egress, XDP_PASS) | (Direction::Ingress, TC_ACT_UNSPEC) => true,
            (Direction::Egress, XDP_DROP) | (Direction::Ingress, TC_ACT_SHOT) => false,
            (d, r) => bail!("unexpected return value {r} from the {d} program"),
        };
        Ok(RunResult { pass, duration })
    }
}
