//! IP fragments: only the first fragment carries ports, so it alone is classified; an
//! allowed first fragment lets the rest of its packet (same addresses, protocol and
//! identification, within `FRAG_TIMEOUT_NS`) through. Anything else is dropped: a
//! fragment never passes for want of ports. Reference twin: `sg_common::conntrack`.
use sg_common::abi::{FRAG_TIMEOUT_NS, FragEntry, FragKey, Reason};

use crate::{clock::Clock, maps::FRAGS, parse::Meta};

#[inline(always)]
fn key(ifindex: u32, m: &Meta) -> FragKey {
    FragKey {
        ifindex,
        family: m.family,
        protocol: m.protocol,
        _pad: 0,
        id: m.frag_id,
        src: m.src,
        dst: m.dst,
    }
}

/// Verdict of a non-first fragment.
#[inline(always)]
pub fn follow(ifindex: u32, m: &Meta, clock: &mut Clock) -> Reason {
    // SAFETY: plain-data map value.
    match unsafe { FRAGS.get(&key(ifindex, m)) } {
        Some(e) if clock.now().saturating_sub(e.allowed_ns) <= FRAG_TIMEOUT_NS => Reason::AllowFragment,
        _ => Reason::DropFragment,
    }
}

/// Records an allowed first fragment.
#[inline(always)]
pub fn remember(ifindex: u32, m: &Meta, clock: &mut Clock) {
    let entry = FragEntry { allowed_ns: clock.now() };
    let _ = FRAGS.insert(&key(ifindex, m), &entry, 0);
}
