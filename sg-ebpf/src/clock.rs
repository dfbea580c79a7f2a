//! The packet's timestamp, read at most once and only when something needs it: a
//! helper call costs tens of nanoseconds, and most packets (no flow, no drop event)
//! need no time at all.
use aya_ebpf::helpers::bpf_ktime_get_ns;

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
            self.now = unsafe { bpf_ktime_get_ns() };
        }
        self.now
    }
}
