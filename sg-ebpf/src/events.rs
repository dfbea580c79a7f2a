//! Drop events to the agent through a ring buffer, rate-limited per CPU so a flood of
//! dropped packets cannot starve the agent (the excess is counted, not sent).
use sg_common::abi::{DropEvent, EVENTS_PER_CPU_PER_SEC, Reason};

use crate::{
    clock::Clock,
    maps::{EVENT_BUDGET, EVENTS},
    parse::Meta,
};

#[inline(always)]
pub fn emit(ifindex: u32, direction: u8, reason: Reason, meta: Option<&Meta>, clock: &mut Clock) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    let b = unsafe { &mut *budget };
    // Budget spent (a flood): only every 64th drop reads the clock to see whether the
    // window is over, so a flood's drops cost next to nothing here.
    if b.emitted >= EVENTS_PER_CPU_PER_SEC && (b.suppressed + 1) & 63 != 0 {
        b.suppressed += 1;
        return;
    }
    let now = clock.now();
    if now.wrapping_sub(b.window_start_ns) >= 1_000_000_000 {
        b.window_start_ns = now;
        b.emitted = 0;
    }
    if b.emitted >= EVENTS_PER_CPU_PER_SEC {
        b.suppressed += 1;
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<DropEvent>(0) else {
        b.suppressed += 1;
        return;
    };
    // Written field by field into the reservation: no 64-byte copy on the stack.
    let ev: *mut DropEvent = slot.as_mut_ptr();
    // SAFETY: `ev` points to an exclusive reservation of size_of::<DropEvent>() bytes.
    unsafe {
        (*ev).timestamp_ns = now;
        (*ev).ifindex = ifindex;
        (*ev).reason = reason as u32;
        (*ev).direction = direction;
        (*ev)._pad = 0;
        (*ev).suppressed = b.suppressed;
        match meta {
            Some(m) => {
                (*ev).family = m.family;
                (*ev).protocol = m.protocol;
                (*ev).src_port = m.src_port;
                (*ev).dst_port = m.port_key;
                (*ev).src = m.src;
                (*ev).dst = m.dst;
            }
            None => {
                (*ev).family = 0;
                (*ev).protocol = 0;
                (*ev).src_port = 0;
                (*ev).dst_port = 0;
                (*ev).src = [0; 16];
                (*ev).dst = [0; 16];
            }
        }
    }
    slot.submit(0);
    b.emitted += 1;
    b.suppressed = 0;
}
