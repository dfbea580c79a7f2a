//! Making the kernel match a desired state, all or nothing.
//!
//! Order of operations (each step leaves enforcement exactly old or exactly new):
//! 1. validate, resolve every interface, compile every instance, check capacities:
//!    any error here and nothing has been touched;
//! 2. write every instance's entries under fresh policy ids (invisible to packets);
//! 3. attach programs to new interfaces (they pass everything until bound);
//! 4. bind each interface to its new policy: one map update per instance;
//! 5. unbind and detach instances that left, delete unreferenced entries.
//!
//! On an error in steps 2-3 the fresh entries are collected and the old bindings stay.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use sg_common::abi::IfacePolicy;
use tracing::{info, warn};

use crate::compile::{CompiledPolicy, compile};
use crate::dataplane::Dataplane;
use crate::desired::{DesiredState, plain_rules};
use crate::netns;

/// Per-instance limit on compiled entries, so one instance cannot starve the host.
pub const DEFAULT_MAX_ENTRIES_PER_INSTANCE: usize = 65_536;

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_instances: usize,
    pub max_rules_per_instance: usize,
    pub max_entries_per_instance: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instances: 4096,
            max_rules_per_instance: 5000,
            max_entries_per_instance: DEFAULT_MAX_ENTRIES_PER_INSTANCE,
        }
    }
}

/// Checks and compiles; touches nothing. Returns ifindex -> compiled policy (policy
/// ids still unassigned).
pub fn prepare(state: &DesiredState, limits: &Limits) -> Result<Vec<(u32, String, CompiledPolicy)>> {
    if state.instances.len() > limits.max_instances {
        bail!(
            "{} instances exceed the limit of {} instances per host (max_instances)",
            state.instances.len(),
            limits.max_instances
        );
    }
    let mut out = Vec::new();
    for inst in &state.instances {
        let Some(ifindex) = netns::ifindex(&inst.interface) else {
            bail!(
                "instance {}: interface {} does not exist (in this network namespace)",
                inst.id,
                inst.interface
            );
        };
        let rules = plain_rules(&inst.effective_rules());
        if rules.len() > limits.max_rules_per_instance {
            bail!(
                "instance {}: {} rules exceed the limit of {} rules per instance (max_rules_per_instance)",
                inst.id,
                rules.len(),
                limits.max_rules_per_instance
            );
        }
        let compiled = compile(0, &rules);
        if compiled.len() > limits.max_entries_per_instance {
            bail!(
                "instance {}: its rules compile to {} map entries, over the limit of {} (max_entries_per_instance); \
                 overlapping port ranges with distinct CIDRs multiply entries",
                inst.id,
                compiled.len(),
                limits.max_entries_per_instance
            );
        }
        out.push((ifindex, inst.id.to_string(), compiled));
    }
    Ok(out)
}

/// Applies a validated desired state to the data plane.
pub fn apply(dp: &mut Dataplane, state: &DesiredState, limits: &Limits) -> Result<()> {
    let prepared = prepare(state, limits)?;
    let (ports, cidrs) =
        prepared.iter().fold((0, 0), |(p, c), (_, _, x)| (p + x.port_classes.len(), c + x.cidrs.len()));
    // Old and new entries coexist until the switch: both must fit.
    let (live_ports, live_cidrs) = live_entry_counts(dp)?;
    if live_ports + ports > dp.capacity.port_class_entries as usize {
        bail!(
            "port-class map would hold {} entries, over its capacity of {} (port_class_entries)",
            live_ports + ports,
            dp.capacity.port_class_entries
        );
    }
    if live_cidrs + cidrs > dp.capacity.cidr_entries as usize {
        bail!(
            "cidr map would hold {} entries, over its capacity of {} (cidr_entries)",
            live_cidrs + cidrs,
            dp.capacity.cidr_entries
        );
    }

    let timeouts =
        state.conntrack.as_ref().map(|c| c.timeouts.resolve()).unwrap_or(sg_common::abi::CtTimeouts::DEFAULT);
    dp.set_timeouts(&timeouts).context("setting conntrack timeouts")?;
    let result = write_and_bind(dp, prepared);
    let removed = dp.collect_garbage().context("collecting unreferenced entries")?;
    result?;
    info!(removed, "apply complete");
    Ok(())
}

fn write_and_bind(dp: &mut Dataplane, prepared: Vec<(u32, String, CompiledPolicy)>) -> Result<()> {
    let old = dp.bindings()?;
    let mut bindings = BTreeMap::new();
    let mut next_id = dp.fresh_policy_id()?;
    for (ifindex, instance, mut compiled) in prepared {
        let policy_id = next_id;
        next_id = next_id.checked_add(1).context("policy ids exhausted")?;
        // Re-key under the fresh id.
        for e in &mut compiled.port_classes {
            e.key.policy_id = policy_id;
        }
        for e in &mut compiled.cidrs {
            e.key.policy_id = policy_id;
        }
        compiled.policy_id = policy_id;
        dp.write_policy(&compiled).with_context(|| format!("instance {instance}"))?;
        bindings.insert(ifindex, (instance, policy_id));
    }
    for (ifindex, (instance, _)) in &bindings {
        dp.attach(*ifindex).with_context(|| format!("instance {instance}"))?;
    }
    for (ifindex, (instance, policy_id)) in &bindings {
        dp.bind(*ifindex, IfacePolicy { policy_id: *policy_id, flags: 0 })?;
        info!(%instance, ifindex, policy_id, "rules in force");
    }
    // Instances that left: stop enforcing (unbind first: packets pass), then detach.
    let mut leaving: std::collections::BTreeSet<u32> = dp.attached_ifindexes()?;
    leaving.extend(old.keys());
    for ifindex in &leaving {
        if !bindings.contains_key(ifindex) {
            dp.unbind(*ifindex)?;
            if let Err(e) = dp.detach(*ifindex) {
                warn!(ifindex, "detaching: {e:#}");
            }
            info!(ifindex, "enforcement removed");
        }
    }
    Ok(())
}

fn live_entry_counts(dp: &mut Dataplane) -> Result<(usize, usize)> {
    // Everything stored counts, live and garbage alike: an upper bound.
    dp.entry_counts()
}

/// Replaces the rules bound to one interface (compile under a fresh id, write, switch,
/// collect the old entries). The primitive behind verdict tests and benchmarks; the
/// interface need not have programs attached.
pub fn replace_rules(dp: &mut Dataplane, ifindex: u32, rules: &[sg_common::model::Rule]) -> Result<u32> {
    let policy_id = dp.fresh_policy_id()?;
    let compiled = compile(policy_id, rules);
    if let Err(e) = dp.write_policy(&compiled) {
        dp.collect_garbage()?;
        return Err(e);
    }
    dp.bind(ifindex, IfacePolicy { policy_id, flags: 0 })?;
    dp.collect_garbage()?;
    Ok(policy_id)
}
