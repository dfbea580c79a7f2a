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

/// The rule of `direction` in `policy_id` that allows the packet (its id), if any.
#[inline(always)]
pub fn classify(policy_id: u32, direction: u8, meta: &Meta) -> Option<u32> {
    let remote = if direction == DIR_INGRESS { &meta.src } else { &meta.dst };
    matching_rule(policy_id, direction, meta.family, meta.protocol, meta.port_key, remote)
}

/// Whether a rule allows a packet with these fields (conntrack re-checks opening
/// packets with it).
#[inline(always)]
pub fn classify_fields(
    policy_id: u32,
    direction: u8,
    family: u8,
    protocol: u8,
    port_key: u16,
    remote: &[u8; 16],
) -> Reason {
    match matching_rule(policy_id, direction, family, protocol, port_key, remote) {
        Some(_) => Reason::AllowRule,
        None => Reason::DropNoRule,
    }
}

/// Two LPM lookups: port -> class, then remote address within the class.
#[inline(always)]
fn matching_rule(
    policy_id: u32,
    direction: u8,
    family: u8,
    protocol: u8,
    port_key: u16,
    remote: &[u8; 16],
) -> Option<u32> {
    let port_key = Key::new(
        80,
        PortClassKey { policy_id, direction, family, protocol, _pad: 0, port_be: port_key.to_be(), _pad2: 0 },
    );
    let class = PORT_CLASS.get(&port_key)?;
    let cidr_key =
        Key::new(CIDR_KEY_FIXED_BITS + 128, CidrKey { policy_id, class_id: class.class_id, addr: *remote });
    CIDR_ALLOW.get(&cidr_key).map(|m| m.rule_id)
}
