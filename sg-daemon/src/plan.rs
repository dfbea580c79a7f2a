//! Pure core: from the stored state and a new desired state, the plan of what changes
//! (and the rule UUIDs: kept when a rule is unchanged, new otherwise).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::desired::{DesiredState, InstanceId, RuleSpec};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub instances_added: Vec<InstanceId>,
    pub instances_removed: Vec<InstanceId>,
    pub instances_unchanged: Vec<InstanceId>,
    pub instances_changed: Vec<InstanceId>,
    /// (instance, rule id, rule text)
    pub rules_added: Vec<(InstanceId, Uuid, String)>,
    pub rules_removed: Vec<(InstanceId, Uuid, String)>,
    pub rules_unchanged: usize,
    /// Warnings for the operator (e.g. rules opening every port).
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.instances_added.is_empty()
            && self.instances_removed.is_empty()
            && self.instances_changed.is_empty()
    }
}

/// Resolves `desired` against `current`: every rule gets a UUID, and the plan lists
/// the differences. Returns the state to store.
pub fn plan(current: &DesiredState, desired: &DesiredState) -> (DesiredState, Plan) {
    let mut plan = Plan::default();
    let old: BTreeMap<&InstanceId, _> = current.instances.iter().map(|i| (&i.id, i)).collect();
    let mut resolved = desired.clone();
    for inst in &mut resolved.instances {
        let before = old.get(&inst.id);
        let old_rules: Vec<RuleSpec> = before.map(|b| b.effective_rules()).unwrap_or_default();
        let mut rules = inst.effective_rules();
        for spec in &mut rules {
            if spec.id.is_none() {
                spec.id = old_rules.iter().find(|o| o.rule == spec.rule).and_then(|o| o.id);
            }
            let id = *spec.id.get_or_insert_with(Uuid::new_v4);
            if spec.rule.opens_all_ports() {
                plan.warnings.push(format!(
                    "WARNING: instance {} rule {id} ({}) opens EVERY port to ingress",
                    inst.id, spec.rule
                ));
            }
            if old_rules.iter().any(|o| o.id == Some(id) && o.rule == spec.rule) {
                plan.rules_unchanged += 1;
            } else {
                plan.rules_added.push((inst.id.clone(), id, spec.rule.to_string()));
            }
        }
        for o in &old_rules {
            if !rules.iter().any(|r| r.id == o.id && r.rule == o.rule) {
                plan.rules_removed.push((inst.id.clone(), o.id.unwrap_or_default(), o.rule.to_string()));
            }
        }
        inst.rules = Some(rules);
        match before {
            None => plan.instances_added.push(inst.id.clone()),
            Some(b)
                if b.interface == inst.interface
                    && b.os == inst.os
                    && b.effective_rules() == inst.effective_rules() =>
            {
                plan.instances_unchanged.push(inst.id.clone())
            }
            Some(_) => plan.instances_changed.push(inst.id.clone()),
        }
    }
    for inst in &current.instances {
        if !resolved.instances.iter().any(|i| i.id == inst.id) {
            plan.instances_removed.push(inst.id.clone());
            for o in inst.effective_rules() {
                plan.rules_removed.push((inst.id.clone(), o.id.unwrap_or_default(), o.rule.to_string()));
            }
        }
    }
    (resolved, plan)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ids: &[InstanceId]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        writeln!(
            f,
            "instances: {} added, {} removed, {} changed, {} unchanged",
            self.instances_added.len(),
            self.instances_removed.len(),
            self.instances_changed.len(),
            self.instances_unchanged.len()
        )?;
        for (label, ids) in [
            ("add", &self.instances_added),
            ("remove", &self.instances_removed),
            ("change", &self.instances_changed),
        ] {
            if !ids.is_empty() {
                writeln!(f, "  {label} instance: {}", list(ids))?;
            }
        }
        writeln!(
            f,
            "rules: {} added, {} removed, {} unchanged",
            self.rules_added.len(),
            self.rules_removed.len(),
            self.rules_unchanged
        )?;
        for (inst, id, text) in &self.rules_added {
            writeln!(f, "  + {inst} {id} {text}")?;
        }
        for (inst, id, text) in &self.rules_removed {
            writeln!(f, "  - {inst} {id} {text}")?;
        }
        for w in &self.warnings {
            writeln!(f, "{w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_survive_reapply() {
        let d = DesiredState::from_yaml("instances:\n  - {id: a, interface: t0, os: linux}\n", "x").unwrap();
        let (s1, p1) = plan(&DesiredState::default(), &d);
        assert_eq!(p1.instances_added.len(), 1);
        assert_eq!(p1.rules_added.len(), 5);
        let (s2, p2) = plan(&s1, &d);
        assert!(p2.is_noop(), "{p2}");
        assert_eq!(p2.rules_unchanged, 5);
        assert_eq!(s1, s2);
        let (_, p3) = plan(&s1, &DesiredState::default());
        assert_eq!(p3.instances_removed.len(), 1);
        assert_eq!(p3.rules_removed.len(), 5);
    }
}
