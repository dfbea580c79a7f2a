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
//! The geo block's prefix set is swapped the same way before step 2 (new set under a
//! fresh id, one config update, old set deleted). On an error in steps 2-3 the fresh
//! entries are collected and the old bindings stay.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use sg_common::abi::{IFACE_FLAG_AUDIT, IFACE_FLAG_GEO_BLOCK};
use tracing::{info, warn};

use crate::compile::{CompiledPolicy, compile_instance};
use crate::dataplane::Dataplane;
use crate::desired::{DesiredState, plain_rules};
use crate::geo::GeoPlan;
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

/// One instance, checked and compiled (policy id still unassigned).
pub struct Prepared {
    pub ifindex: u32,
    pub instance: String,
    pub compiled: CompiledPolicy,
    /// `IFACE_FLAG_*` bits.
    pub flags: u32,
    /// Handles of the instance's rules (keys of their counters).
    pub rule_ids: Vec<u32>,
}

/// A rule's 32-bit handle: the first four bytes of its UUID (the 8 hex characters an
/// operator types to `rm` it).
pub fn rule_handle(id: &uuid::Uuid) -> u32 {
    let b = id.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Checks and compiles; touches nothing.
pub fn prepare(state: &DesiredState, limits: &Limits) -> Result<Vec<Prepared>> {
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
        let specs = inst.effective_rules();
        let rules = plain_rules(&specs);
        // Rules without a UUID (never stored) are counted under their index.
        let rule_ids: Vec<u32> =
            specs.iter().enumerate().map(|(i, s)| s.id.as_ref().map_or(i as u32, rule_handle)).collect();
        if rules.len() > limits.max_rules_per_instance {
            bail!(
                "instance {}: {} rules exceed the limit of {} rules per instance (max_rules_per_instance)",
                inst.id,
                rules.len(),
                limits.max_rules_per_instance
            );
        }
        let compiled = compile_instance(0, &rules, &inst.geo_exempt);
        if compiled.len() > limits.max_entries_per_instance {
            bail!(
                "instance {}: its rules compile to {} map entries, over the limit of {} (max_entries_per_instance); \
                 overlapping port ranges with distinct CIDRs multiply entries",
                inst.id,
                compiled.len(),
                limits.max_entries_per_instance
            );
        }
        let geo = state.geo_block.as_ref().is_some_and(|g| g.applies_to(inst.os));
        let flags =
            if geo { IFACE_FLAG_GEO_BLOCK } else { 0 } | if inst.audit { IFACE_FLAG_AUDIT } else { 0 };
        out.push(Prepared { ifindex, instance: inst.id.to_string(), compiled, flags, rule_ids });
    }
    Ok(out)
}

/// Applies a desired state, checked and compiled by [`prepare`], to the data plane.
/// Returns the geo prefix set loaded by this apply, if any: (set id, fingerprint) to
/// record.
pub fn apply(
    dp: &mut Dataplane,
    state: &DesiredState,
    prepared: Vec<Prepared>,
    geo: GeoPlan,
) -> Result<Option<(u32, String)>> {
    // Old and new entries coexist until the switch: both must fit. Everything stored
    // counts, live and garbage alike: an upper bound.
    let usage = dp.trie_usage()?;
    let sum = |f: fn(&CompiledPolicy) -> usize| prepared.iter().map(|x| f(&x.compiled)).sum::<usize>();
    let (port_cap, cidr_cap) = (dp.capacity.port_class_entries as usize, dp.capacity.cidr_entries as usize);
    for (map, stored, new, cap, limit) in [
        ("PORT_CLASS", usage.port_entries, sum(|c| c.port_classes.len()), port_cap, "port_class_entries"),
        (
            "PORT_CLASS_EXACT",
            usage.port_exact_entries,
            sum(|c| c.port_exact.len()),
            port_cap,
            "port_class_entries",
        ),
        ("CIDR_ALLOW", usage.cidr_entries, sum(|c| c.cidrs.len()), cidr_cap, "cidr_entries"),
        ("CIDR_ALLOW_EXACT", usage.cidr_exact_entries, sum(|c| c.cidr_exact.len()), cidr_cap, "cidr_entries"),
    ] {
        if stored + new > cap {
            bail!("{map} would hold {} entries, over its capacity of {cap} ({limit})", stored + new);
        }
    }

    if let GeoPlan::Load { prefixes, .. } = &geo {
        // The old set stays until the switch: both must fit.
        let current = dp.geo_config()?.set_id;
        let old = if current != 0 { dp.geo_set_len(current)? } else { 0 };
        let cap = dp.capacity.geo_entries as usize;
        if old + prefixes.len() > cap {
            bail!(
                "geo prefix set of {} prefixes does not fit: GEO_BLOCK holds {cap} entries (geo_entries) and the \
                 set in force ({old}) stays until the switch; raise limits.geo_entries to at least {} \
                 (maps are resized by `sg-daemon uninstall` then apply)",
                prefixes.len(),
                old + prefixes.len()
            );
        }
    }
    let loaded = apply_geo(dp, geo)?;
    let result = write_and_bind(dp, prepared, &usage.policy_ids);
    let removed = dp.collect_garbage().context("collecting unreferenced entries")?;
    result?;
    // Last, so a refused apply leaves the timeouts in force too.
    let timeouts =
        state.conntrack.as_ref().map(|c| c.timeouts.resolve()).unwrap_or(sg_common::abi::CtTimeouts::DEFAULT);
    dp.set_timeouts(&timeouts).context("setting conntrack timeouts")?;
    info!(removed, "apply complete");
    Ok(loaded)
}

/// Swaps the geo prefix set (or switches the block off) without a window.
fn apply_geo(dp: &mut Dataplane, geo: GeoPlan) -> Result<Option<(u32, String)>> {
    let current = dp.geo_config()?;
    match geo {
        GeoPlan::Off => {
            if current.set_id != 0 {
                dp.set_geo_config(&Default::default())?;
            }
            dp.delete_geo_sets_except(0)?;
            Ok(None)
        }
        GeoPlan::Keep { mut config } => {
            config.set_id = current.set_id;
            dp.set_geo_config(&config)?;
            Ok(None)
        }
        GeoPlan::Load { mut config, prefixes, fingerprint } => {
            // Alternate between two set ids; delete leftovers of a crashed swap first.
            let set_id = if current.set_id == 1 { 2 } else { 1 };
            dp.delete_geo_sets_except(current.set_id)?;
            if let Err(e) = dp.write_geo_set(set_id, &prefixes) {
                dp.delete_geo_sets_except(current.set_id)?;
                return Err(e);
            }
            config.set_id = set_id;
            dp.set_geo_config(&config)?;
            let removed = dp.delete_geo_sets_except(set_id)?;
            info!(set_id, prefixes = prefixes.len(), removed, "geo prefix set swapped");
            Ok(Some((set_id, fingerprint)))
        }
    }
}

fn write_and_bind(dp: &mut Dataplane, prepared: Vec<Prepared>, stored_ids: &BTreeSet<u32>) -> Result<()> {
    let old = dp.bindings()?;
    let mut bindings = BTreeMap::new();
    let mut next_id = dp.fresh_policy_id_after(stored_ids)?;
    let wanted: Vec<(u32, &[u32])> = prepared.iter().map(|p| (p.ifindex, p.rule_ids.as_slice())).collect();
    let slots = dp.rule_slots(&wanted)?;
    for (Prepared { ifindex, instance, mut compiled, flags, rule_ids }, slots) in
        prepared.into_iter().zip(slots)
    {
        let policy_id = next_id;
        next_id = next_id.checked_add(1).context("policy ids exhausted")?;
        compiled.set_policy_id(policy_id);
        compiled.set_counter_slots(&slots);
        dp.write_policy(&compiled).with_context(|| format!("instance {instance}"))?;
        bindings.insert(ifindex, (instance, policy_id, flags, rule_ids));
    }
    for (ifindex, (instance, ..)) in &bindings {
        dp.attach(*ifindex).with_context(|| format!("instance {instance}"))?;
    }
    for (ifindex, (instance, policy_id, flags, _)) in &bindings {
        dp.bind(*ifindex, *policy_id, *flags)?;
        info!(%instance, ifindex, policy_id, flags, "rules in force");
    }
    // Instances that left: stop enforcing (unbind first: packets pass), then detach.
    let mut leaving: BTreeSet<u32> = dp.attached_ifindexes()?;
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
    // Counters of rules (and instances) that are gone; also any slot an earlier,
    // failed apply handed out.
    dp.retain_rule_slots(|k| bindings.get(&k.ifindex).is_some_and(|(.., ids)| ids.contains(&k.rule_id)))?;
    Ok(())
}

/// Replaces the rules bound to one interface (compile under a fresh id, write, switch,
/// collect the old entries). The primitive behind verdict tests and benchmarks; the
/// interface need not have programs attached.
pub fn replace_rules(dp: &mut Dataplane, ifindex: u32, rules: &[sg_common::model::Rule]) -> Result<u32> {
    replace_policy(dp, ifindex, rules, &[], 0)
}

/// [`replace_rules`] with geo-block exemptions and `IFACE_FLAG_*` flags.
pub fn replace_policy(
    dp: &mut Dataplane,
    ifindex: u32,
    rules: &[sg_common::model::Rule],
    geo_exempt: &[ipnet::IpNet],
    flags: u32,
) -> Result<u32> {
    let policy_id = dp.fresh_policy_id()?;
    let mut compiled = compile_instance(policy_id, rules, geo_exempt);
    // Rules without UUIDs are counted under their index.
    let rule_ids: Vec<u32> = (0..rules.len() as u32).collect();
    compiled.set_counter_slots(&dp.rule_slots(&[(ifindex, &rule_ids)])?[0]);
    if let Err(e) = dp.write_policy(&compiled) {
        dp.collect_garbage()?;
        return Err(e);
    }
    dp.bind(ifindex, policy_id, flags)?;
    dp.retain_rule_slots(|k| k.ifindex != ifindex || rule_ids.contains(&k.rule_id))?;
    dp.collect_garbage()?;
    Ok(policy_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lo` exists in every network namespace, so these run without privileges.
    fn state(extra: &str) -> DesiredState {
        let yaml = format!(
            "instances:\n  - id: a\n    interface: lo\n    os: linux\n    rules:\n{}{extra}",
            (1..=20)
                .map(|p| format!(
                    "      - {{direction: ingress, ethertype: IPv4, protocol: tcp, port_min: {p}}}\n"
                ))
                .collect::<String>()
        );
        DesiredState::from_yaml(&yaml, "t").unwrap()
    }

    #[test]
    fn limits_are_named_when_exceeded() {
        let s = state("limits: {max_rules_per_instance: 10}\n");
        let err = prepare(&s, &s.limits().0).err().unwrap().to_string();
        assert!(
            err.contains("20 rules exceed the limit of 10 rules per instance (max_rules_per_instance)"),
            "{err}"
        );
        let s = state("limits: {max_entries_per_instance: 5}\n");
        let err = prepare(&s, &s.limits().0).err().unwrap().to_string();
        assert!(err.contains("max_entries_per_instance"), "{err}");
        let s = state("");
        assert!(prepare(&s, &s.limits().0).is_ok());
        let zero = "instances: []\nlimits: {conntrack_entries: 0}\n";
        let err = DesiredState::from_yaml(zero, "t").unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn unknown_interface_is_named() {
        let s =
            DesiredState::from_yaml("instances:\n  - {id: a, interface: nosuch0, os: linux}\n", "t").unwrap();
        let err = prepare(&s, &s.limits().0).err().unwrap().to_string();
        assert!(err.contains("instance a: interface nosuch0 does not exist"), "{err}");
    }
}
