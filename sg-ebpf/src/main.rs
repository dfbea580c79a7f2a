//! sg kernel programs. Each instance's host-side interface carries two of them:
//! - XDP on its receive path sees what the instance sends (instance egress);
//! - TC (tcx egress) on its transmit path sees what is sent to it (instance ingress).
//!
//! Both run the same pipeline: bind interface -> policy ([`maps`]), parse headers
//! ([`parse`]), classify against the compiled rules ([`classify`]), count and return
//! the verdict ([`verdict`]). Interfaces without a policy are never touched.
#![no_std]
#![no_main]

mod bench;
mod classify;
mod clock;
mod conntrack;
mod events;
mod fragments;
mod geo;
mod maps;
mod parse;
mod verdict;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use sg_common::abi::{DIR_EGRESS, DIR_INGRESS};

use crate::parse::Bounds;

/// Instance egress: frames the instance transmits, seen on the host side's receive path.
#[xdp]
pub fn sg_instance_egress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let bounds = Bounds { start: ctx.data(), end: ctx.data_end() };
    let len = (bounds.end - bounds.start) as u32;
    match verdict::decide(ifindex, DIR_EGRESS, &bounds, len) {
        verdict::Action::Pass => xdp_action::XDP_PASS,
        verdict::Action::Drop => xdp_action::XDP_DROP,
    }
}

/// Headers the parser may need in the linear part of an skb (Ethernet, two VLAN tags,
/// IPv6 with extension headers, TCP). Larger pulls cost more than they help.
const TC_LINEAR_WANT: u32 = 256;

/// Instance ingress: packets the host transmits to the instance (tcx egress hook).
#[classifier]
pub fn sg_instance_ingress(ctx: TcContext) -> i32 {
    // SAFETY: the context of a classifier is an __sk_buff.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    let want = if ctx.len() < TC_LINEAR_WANT { ctx.len() } else { TC_LINEAR_WANT };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // Non-linear skb: make the headers readable; on failure the parser sees a
        // short packet and fails closed.
        let _ = ctx.pull_data(want);
    }
    let bounds = Bounds { start: ctx.data(), end: ctx.data_end() };
    match verdict::decide(ifindex, DIR_INGRESS, &bounds, ctx.len()) {
        // UNSPEC lets later tcx programs run (and passes if there are none).
        verdict::Action::Pass => TC_ACT_UNSPEC,
        verdict::Action::Drop => TC_ACT_SHOT as i32,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
