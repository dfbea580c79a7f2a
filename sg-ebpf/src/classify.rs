//! Rule lookup: two LPM lookups whatever the number of rules (see `sg_common::abi`).
use aya_ebpf::maps::lpm_trie::Key;
use sg_common::abi::{CIDR_KEY_FIXED_BITS, CidrKey, DIR_INGRESS, IfacePolicy, PortClassKey, Reason};

use crate::{
    maps::{CIDR_ALLOW, IFACE_POLICY, PORT_CLASS},
    parse::Meta,
};

/// The policy bound to an interface, `None` when the interface is not managed.
#[inline(always)]
pub fn policy_of(ifindex: u32) -> Option<IfacePolicy> {
    // SAFETY: plain-data value copied out of the map.
    unsafe { IFACE_POLICY.get(&ifindex) }.copied()
}

/// Whether a rule of `direction` in `policy_id` allows the packet.
#[inline(always)]
pub fn classify(policy_id: u32, direction: u8, meta: &Meta) -> Reason {
    let port_key = Key::new(
        80,
        PortClassKey {
            policy_id,
            direction,
            family: meta.family,
            protocol: meta.protocol,
            _pad: 0,
            port_be: meta.port_key.to_be(),
            _pad2: 0,
        },
    );
    let Some(class) = PORT_CLASS.get(&port_key) else {
        return Reason::DropNoRule;
    };
    let remote = if direction == DIR_INGRESS { meta.src } else { meta.dst };
    let cidr_key =
        Key::new(CIDR_KEY_FIXED_BITS + 128, CidrKey { policy_id, class_id: class.class_id, addr: remote });
    if CIDR_ALLOW.get(&cidr_key).is_some() { Reason::AllowRule } else { Reason::DropNoRule }
}
