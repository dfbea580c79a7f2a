//! Programs for benchmarks only; the daemon never loads them.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Baseline: the cheapest XDP program (passes everything). Benchmarks report sg's
/// cost as the difference to this one, measured in the same run.
#[xdp]
pub fn sg_bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Baseline that drops: the receiver-side sink for live-traffic benchmarks.
#[xdp]
pub fn sg_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Traffic generator: with BPF_PROG_TEST_RUN's live-frames mode, XDP_TX transmits the
/// test frame out of the context's interface (a veth end), at line rate.
#[xdp]
pub fn sg_bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
