//! The pipeline: bind interface -> policy, parse, geo block, connection tracking, rules;
//! then count the [`Reason`] and turn it into pass/drop.
use sg_common::abi::{
    DIR_INGRESS, FAMILY_V6, FRAG_FIRST, FRAG_REST, IFACE_FLAG_AUDIT, IFACE_FLAG_GEO_BLOCK, IPPROTO_ICMPV6,
    IfacePolicy, Reason, router_advert_verdict,
};

use crate::{
    classify,
    clock::Clock,
    conntrack::{self, Tracked},
    events, fragments, geo,
    maps::{IFACE_STATS, RULE_STATS},
    parse,
};

pub enum Action {
    Pass,
    Drop,
}

/// Decides one packet of interface `ifindex` travelling in `direction`.
#[inline(always)]
pub fn decide(ifindex: u32, direction: u8, bounds: &parse::Bounds, len: u32) -> Action {
    let Some(policy) = classify::policy_of(ifindex) else {
        return Action::Pass; // not a managed instance: never touched
    };
    let mut clock = Clock::new();
    let reason = match parse::parse(bounds) {
        parse::Parsed::Decided(reason) => {
            if !reason.is_allow() {
                events::emit(ifindex, direction, reason, None, &mut clock);
            }
            reason
        }
        parse::Parsed::Ip(meta) => {
            let reason = decide_ip(ifindex, &policy, direction, &meta, len, &mut clock);
            if !reason.is_allow() {
                events::emit(ifindex, direction, reason, Some(&meta), &mut clock);
            }
            reason
        }
    };
    count(&policy, reason);
    // Audit mode: everything is counted as it would be decided, nothing is dropped.
    if reason.is_allow() || policy.flags & IFACE_FLAG_AUDIT != 0 { Action::Pass } else { Action::Drop }
}

#[inline(always)]
fn decide_ip(
    ifindex: u32,
    policy: &IfacePolicy,
    direction: u8,
    meta: &parse::Meta,
    len: u32,
    clock: &mut Clock,
) -> Reason {
    if meta.frag == FRAG_REST {
        return fragments::follow(ifindex, meta, clock);
    }
    if meta.protocol == IPPROTO_ICMPV6
        && meta.family == FAMILY_V6
        && let Some(reason) = router_advert_verdict(direction, (meta.port_key >> 8) as u8)
    {
        return reason;
    }
    let reason = decide_packet(ifindex, policy, direction, meta, len, clock);
    if meta.frag == FRAG_FIRST && reason.is_allow() {
        fragments::remember(ifindex, meta, clock);
    }
    reason
}

#[inline(always)]
fn decide_packet(
    ifindex: u32,
    policy: &IfacePolicy,
    direction: u8,
    meta: &parse::Meta,
    len: u32,
    clock: &mut Clock,
) -> Reason {
    // The geo block wins over rules and tracked flows alike.
    if direction == DIR_INGRESS
        && policy.flags & IFACE_FLAG_GEO_BLOCK != 0
        && geo::blocked(policy.policy_id, meta)
    {
        return Reason::DropGeo;
    }
    // A TCP SYN is classified first: refused, it needs no flow lookup (the reference,
    // `sg_common::conntrack`, says why that changes no verdict). Spares SYN floods.
    let syn_rule = if conntrack::is_pure_syn(meta) {
        match classify::classify(policy.policy_id, direction, meta) {
            None => return Reason::DropNoRule,
            rule => rule,
        }
    } else {
        None
    };
    match conntrack::track(ifindex, policy.policy_id, direction, meta, clock) {
        Tracked::Decided(reason) => reason,
        Tracked::Rules { revoked } => {
            match syn_rule.or_else(|| classify::classify(policy.policy_id, direction, meta)) {
                Some(rule_slot) => {
                    conntrack::open(ifindex, policy.policy_id, direction, meta, clock);
                    count_rule(rule_slot, len);
                    Reason::AllowRule
                }
                None if revoked => Reason::DropRevoked,
                None => Reason::DropNoRule,
            }
        }
    }
}

#[inline(always)]
fn count(policy: &IfacePolicy, reason: Reason) {
    // LLVM knows a `Reason` is < 16 and drops a plain mask, while the verifier may have
    // lost track of the value: a volatile read keeps the mask in the program.
    // SAFETY: read of a local.
    let index = unsafe { core::ptr::read_volatile(&(reason as u32)) } as usize & 15;
    if let Some(c) = IFACE_STATS.get_ptr_mut(policy.stats_slot) {
        // SAFETY: per-CPU value; the index is masked into the array.
        unsafe { (*c).packets[index] += 1 };
    }
}

#[inline(always)]
fn count_rule(rule_slot: u32, len: u32) {
    if let Some(c) = RULE_STATS.get_ptr_mut(rule_slot) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}
