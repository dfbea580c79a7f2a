//! The packet's timestamp, read at most once and only when something needs it: a
//! helper call costs tens of nanoseconds, and most packets (no flow, no drop event)
//! need no time at all.
//!
//! The coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`, updated every tick, at most a
//! tick behind `CLOCK_MONOTONIC`) is enough for idle timeouts counted in seconds and
//! costs about half of `bpf_ktime_get_ns` here (no clock-source read).
use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;

pub struct Clock {
    now: u64,
}

impl Clock {
    #[inline(always)]
    pub const fn new() -> Self {
        Clock { now: 0 }
    }

    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.now == 0 {
            // SAFETY: helper without arguments.
            self.now = unsafe { bpf_ktime_get_coarse_ns() };
        }
        self.now
    }
}
