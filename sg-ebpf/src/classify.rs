//! Rule lookup: port -> class, then remote address within the class, each one hash
//! lookup in the common case whatever the number of rules (see `sg_common::abi`).
use aya_ebpf::maps::lpm_trie::Key;
use sg_common::abi::{
    CIDR_EXACT_MAX_LENS, CIDR_KEY_FIXED_BITS, CIDR_LENS_LPM, CidrExactKey, CidrKey, DIR_INGRESS,
    IFACE_INDEX_SLOTS, IfacePolicy, PortClassKey, Reason, mask_words,
};

use crate::{
    maps::{CIDR_ALLOW, CIDR_ALLOW_EXACT, IFACE_POLICY, IFACE_POLICY_BY_INDEX, PORT_CLASS, PORT_CLASS_EXACT},
    parse::Meta,
};

/// The policy bound to an interface, `None` when the interface is not managed.
#[inline(always)]
pub fn policy_of(ifindex: u32) -> Option<IfacePolicy> {
    if ifindex < IFACE_INDEX_SLOTS {
        let word = IFACE_POLICY_BY_INDEX.get_ptr(ifindex)?;
        // SAFETY: map value pointer; one 8-byte load, as the daemon stores the word in
        // one 8-byte store.
        return IfacePolicy::unpack(unsafe { core::ptr::read_volatile(word) });
    }
    // SAFETY: plain-data value copied out of the map.
    unsafe { IFACE_POLICY.get(&ifindex) }.copied()
}

/// The rule of `direction` in `policy_id` that allows the packet (its counter slot),
/// if any.
#[inline(always)]
pub fn classify(policy_id: u32, direction: u8, meta: &Meta) -> Option<u32> {
    let (a, b) = if direction == DIR_INGRESS { meta.src_words() } else { meta.dst_words() };
    matching_rule(policy_id, direction, meta.family, meta.protocol, meta.port_key, a, b)
}

/// Whether a rule allows a packet with these fields (conntrack re-checks opening
/// packets with it, only after a rule change).
#[inline(always)]
pub fn classify_fields(
    policy_id: u32,
    direction: u8,
    family: u8,
    protocol: u8,
    port_key: u16,
    remote: &[u8; 16],
) -> Reason {
    // SAFETY: reads within the 16-byte array (which need not be aligned).
    let (a, b) = unsafe {
        let p = remote.as_ptr() as *const u64;
        (p.read_unaligned(), p.add(1).read_unaligned())
    };
    match matching_rule(policy_id, direction, family, protocol, port_key, a, b) {
        Some(_) => Reason::AllowRule,
        None => Reason::DropNoRule,
    }
}

/// The rule of `direction` in `policy_id` allowing a packet with these fields, if any.
/// `a`, `b`: the remote address's bytes 0-7 and 8-15 as native-order words.
#[inline(always)]
fn matching_rule(
    policy_id: u32,
    direction: u8,
    family: u8,
    protocol: u8,
    port_key: u16,
    a: u64,
    b: u64,
) -> Option<u32> {
    let selector =
        u64::from(direction) | u64::from(family) << 8 | u64::from(protocol) << 16 | u64::from(port_key) << 32;
    match sg_matching_rule(policy_id, selector, a, b) {
        NO_RULE => None,
        slot => Some(slot as u32),
    }
}

/// [`sg_matching_rule`]'s "no rule" (rule ids are 32-bit).
const NO_RULE: u64 = u64::MAX;

/// Port -> class (exact hash, else the range trie), then the remote address within the
/// class (each of its prefix lengths, longest first, or the CIDR trie). Returns the
/// matching rule's counter slot or [`NO_RULE`]. `selector`: direction | family << 8 |
/// protocol << 16 | port key << 32; `a`, `b`: the remote address's bytes 0-7 and 8-15.
///
/// A *global* BPF function (exported, integer arguments): the verifier checks it once,
/// on its own, instead of once per state of each caller (the rules and two flow
/// re-checks, each reached by many parse outcomes), which the loop of hash lookups
/// would multiply past the verifier's limits. Its keys also live in its own stack
/// frame, not in the packet pipeline's.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sg_matching_rule(policy_id: u32, selector: u64, a: u64, b: u64) -> u64 {
    let key = PortClassKey {
        policy_id,
        direction: selector as u8,
        family: (selector >> 8) as u8,
        protocol: (selector >> 16) as u8,
        _pad: 0,
        port_be: ((selector >> 32) as u16).to_be(),
        _pad2: 0,
    };
    // SAFETY: plain-data values read from map pointers valid for this run.
    let (class_id, lens) = match unsafe { PORT_CLASS_EXACT.get(&key) } {
        Some(c) => (c.class_id, c.packed_lens()),
        None => match PORT_CLASS.get(&Key::new(80, key)) {
            Some(c) => (c.class_id, c.packed_lens()),
            None => return NO_RULE,
        },
    };
    let n_lens = (lens & 0xff) as u8;
    if n_lens == CIDR_LENS_LPM {
        let addr = Meta::addr_of_words(a, b);
        let key = Key::new(CIDR_KEY_FIXED_BITS + 128, CidrKey { policy_id, class_id, addr });
        return CIDR_ALLOW.get(&key).map_or(NO_RULE, |m| u64::from(m.rule_slot));
    }
    // The address as big-endian numbers, masked per prefix length in registers and
    // written back into the (8-aligned) key as two words.
    let (hi, lo) = (u64::from_be(a), u64::from_be(b));
    let mut key = CidrExactKey { addr: [0; 16], policy_id, class_id, prefix_len: 0, _pad: [0; 7] };
    // Unrolled by hand: written as a loop, LLVM turns the bound into a `!=` test on a
    // computed count, which the verifier cannot prove terminates.
    macro_rules! probe {
        ($i:literal) => {
            if n_lens <= $i {
                return NO_RULE;
            }
            key.prefix_len = (lens >> (8 * ($i + 1))) as u8;
            let (h, l) = mask_words(hi, lo, key.prefix_len);
            let words = key.addr.as_mut_ptr() as *mut u64;
            // SAFETY: `addr` is the first field of an 8-aligned struct.
            unsafe {
                words.write(h.to_be());
                words.add(1).write(l.to_be());
            }
            // SAFETY: plain-data value copied out of the map.
            if let Some(m) = unsafe { CIDR_ALLOW_EXACT.get(&key) } {
                return u64::from(m.rule_slot);
            }
        };
    }
    probe!(0);
    probe!(1);
    probe!(2);
    probe!(3);
    probe!(4);
    probe!(5);
    const _: () = assert!(CIDR_EXACT_MAX_LENS == 6, "one probe per prefix length");
    NO_RULE
}
