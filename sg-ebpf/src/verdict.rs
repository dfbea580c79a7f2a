//! The pipeline's last step: turn a [`Reason`] into pass/drop and count it.
use sg_common::abi::Reason;

use crate::{
    classify,
    conntrack::{self, Tracked},
    maps::VERDICT_STATS,
    parse,
};

pub enum Action {
    Pass,
    Drop,
}

/// Decides one packet of interface `ifindex` travelling in `direction`.
#[inline(always)]
pub fn decide(ifindex: u32, direction: u8, bounds: &parse::Bounds) -> Action {
    let Some(policy) = classify::policy_of(ifindex) else {
        return Action::Pass; // not a managed instance: never touched
    };
    let reason = match parse::parse(bounds) {
        parse::Parsed::Decided(reason) => reason,
        parse::Parsed::Ip(meta) => match conntrack::track(ifindex, policy.policy_id, direction, &meta) {
            Tracked::Decided(reason) => reason,
            Tracked::Rules { revoked, key } => match classify::classify(policy.policy_id, direction, &meta) {
                Reason::AllowRule => {
                    if let Some(key) = &key {
                        conntrack::open(key, policy.policy_id, direction, &meta);
                    }
                    Reason::AllowRule
                }
                _ if revoked => Reason::DropRevoked,
                other => other,
            },
        },
    };
    count(reason);
    if reason.is_allow() { Action::Pass } else { Action::Drop }
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(counter) = VERDICT_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}
