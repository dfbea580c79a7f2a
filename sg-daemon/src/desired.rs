//! Pure core: the desired-state document (`sg-daemon apply -f FILE`) and its validation.
//!
//! Every check runs before anything is changed. Errors found while reading YAML carry
//! the file, line and column; errors about the document as a whole name the instance
//! and rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sg_common::model::{Direction, EtherType, Os, PortRange, Protocol, Rule, RuleError, default_rules};
use uuid::Uuid;

/// Identifier of an instance (VM), as the cloud names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstanceId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(InstanceId(s))
        } else {
            Err(format!("invalid instance id `{s}`: use 1-64 characters of A-Z a-z 0-9 - _ ."))
        }
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A rule as stored: the rule itself, its UUID and the operator's explicit consent to
/// open every port, when it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RuleDoc", into = "RuleDoc")]
pub struct RuleSpec {
    pub id: Option<Uuid>,
    pub rule: Rule,
    pub allow_all_ports: bool,
}

/// The on-disk spelling of a rule (OpenStack/TWCC field names).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
    direction: Direction,
    ethertype: EtherType,
    protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port_min: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port_max: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cidr: Option<IpNet>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    allow_all_ports: bool,
}

impl TryFrom<RuleDoc> for RuleSpec {
    type Error = String;
    fn try_from(d: RuleDoc) -> Result<Self, String> {
        let ports = match (d.port_min, d.port_max) {
            (None, None) => None,
            (Some(a), Some(b)) => Some(PortRange { min: a, max: b }),
            (Some(a), None) | (None, Some(a)) => Some(PortRange::single(a)),
        };
        let rule = Rule {
            direction: d.direction,
            ethertype: d.ethertype,
            protocol: d.protocol,
            ports,
            icmp_type: d.icmp_type,
            icmp_code: d.icmp_code,
            cidr: d.cidr.unwrap_or_else(|| d.ethertype.any_cidr()),
        };
        rule.validate().map_err(|e| format!("invalid rule ({rule}): {e}"))?;
        Ok(RuleSpec { id: d.id, rule, allow_all_ports: d.allow_all_ports })
    }
}

impl From<RuleSpec> for RuleDoc {
    fn from(s: RuleSpec) -> RuleDoc {
        let r = s.rule;
        RuleDoc {
            id: s.id,
            direction: r.direction,
            ethertype: r.ethertype,
            protocol: r.protocol,
            port_min: r.ports.map(|p| p.min),
            port_max: r.ports.map(|p| p.max),
            icmp_type: r.icmp_type,
            icmp_code: r.icmp_code,
            cidr: Some(r.cidr),
            allow_all_ports: s.allow_all_ports,
        }
    }
}

impl RuleSpec {
    pub fn new(rule: Rule) -> Self {
        RuleSpec { id: None, rule, allow_all_ports: false }
    }
}

/// One instance in the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub id: InstanceId,
    /// Host-side interface (tap or veth) through which the instance is reached.
    pub interface: String,
    pub os: Os,
    /// Absent in a file: the default rules of `os`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
    /// Sources exempted from the geo block for this instance ("contact customer
    /// service"), validated like rule CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub geo_exempt: Vec<IpNet>,
    /// Audit mode: verdicts are computed and counted, nothing is dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

impl InstanceSpec {
    /// The rules in force: the listed ones, or the defaults of the instance's OS.
    pub fn effective_rules(&self) -> Vec<RuleSpec> {
        match &self.rules {
            Some(rules) => rules.clone(),
            None => default_rules(self.os).into_iter().map(RuleSpec::new).collect(),
        }
    }
}

/// Connection-tracking settings of the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackConfig {
    #[serde(default)]
    pub timeouts: TimeoutsDoc,
}

/// Idle timeouts in seconds; absent fields keep their defaults
/// (`sg_common::abi::CtTimeouts::DEFAULT`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_syn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_closing: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_stream: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<u32>,
}

impl TimeoutsDoc {
    pub fn resolve(&self) -> sg_common::abi::CtTimeouts {
        let d = sg_common::abi::CtTimeouts::DEFAULT;
        sg_common::abi::CtTimeouts {
            tcp_syn: self.tcp_syn.unwrap_or(d.tcp_syn),
            tcp_established: self.tcp_established.unwrap_or(d.tcp_established),
            tcp_closing: self.tcp_closing.unwrap_or(d.tcp_closing),
            udp: self.udp.unwrap_or(d.udp),
            udp_stream: self.udp_stream.unwrap_or(d.udp_stream),
            icmp: self.icmp.unwrap_or(d.icmp),
            other: self.other.unwrap_or(d.other),
            _pad: 0,
        }
    }
}

/// Which instances the geo block applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeoScope {
    /// Windows instances (remote desktop), the default.
    #[default]
    Windows,
    All,
    None,
}

/// Blocking a port for sources in listed countries, whatever the rules say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoBlockConfig {
    /// A MaxMind-format country database (GeoLite2-Country or geo-whois-asn-country).
    pub database: std::path::PathBuf,
    #[serde(default = "default_countries")]
    pub countries: Vec<String>,
    #[serde(default = "default_geo_protocol")]
    pub protocol: Protocol,
    /// Ports or ranges ("9833", "3389-3390").
    #[serde(default = "default_geo_ports")]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub applies_to: GeoScope,
}

fn default_countries() -> Vec<String> {
    sg_geo::DEFAULT_BLOCKED.iter().map(|c| c.to_string()).collect()
}
fn default_geo_protocol() -> Protocol {
    Protocol::Tcp
}
fn default_geo_ports() -> Vec<PortSpec> {
    vec![PortSpec(PortRange::single(sg_common::model::REMOTE_DESKTOP_PORT))]
}

/// A port or port range written as a number or "MIN-MAX".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_yaml::Value", into = "String")]
pub struct PortSpec(pub PortRange);

impl TryFrom<serde_yaml::Value> for PortSpec {
    type Error = String;
    fn try_from(v: serde_yaml::Value) -> Result<Self, String> {
        let text = match v {
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::String(s) => s,
            other => return Err(format!("expected a port or MIN-MAX, got {other:?}")),
        };
        let r: PortRange = text.parse()?;
        if r.min == 0 || r.min > r.max {
            return Err(format!("invalid port range `{text}`: ports are 1-65535, min <= max"));
        }
        Ok(PortSpec(r))
    }
}

impl From<PortSpec> for String {
    fn from(p: PortSpec) -> String {
        p.0.to_string()
    }
}

impl GeoBlockConfig {
    /// Checks everything but the database itself (read at apply time).
    pub fn validate(&self) -> Result<Vec<sg_geo::CountryCode>, String> {
        if self.database.is_relative() {
            return Err(format!(
                "geo_block.database `{}` is a relative path; give an absolute one (the stored state is \
                 re-applied from other directories, by the agent and after a reboot)",
                self.database.display()
            ));
        }
        if self.countries.is_empty() {
            return Err("geo_block.countries: list at least one country".into());
        }
        let codes = self
            .countries
            .iter()
            .map(|c| c.parse::<sg_geo::CountryCode>().map_err(|e| format!("geo_block.countries: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if self.ports.is_empty() || self.ports.len() > sg_common::abi::GEO_MAX_PORT_RANGES {
            return Err(format!(
                "geo_block.ports: give 1 to {} ports or ranges",
                sg_common::abi::GEO_MAX_PORT_RANGES
            ));
        }
        if self.protocol.number().is_none() {
            return Err("geo_block.protocol: name one protocol (tcp, udp, ...), not any".into());
        }
        Ok(codes)
    }

    pub fn applies_to(&self, os: Os) -> bool {
        match self.applies_to {
            GeoScope::All => true,
            GeoScope::Windows => os == Os::Windows,
            GeoScope::None => false,
        }
    }
}

/// Host limits; absent fields keep their defaults. Map capacities take effect when the
/// maps are created (first apply after `uninstall`); the others at every apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rules_per_instance: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries_per_instance: Option<u32>,
    /// Capacity of each port map (`PORT_CLASS_EXACT` and the `PORT_CLASS` trie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_class_entries: Option<u32>,
    /// Capacity of each CIDR map (`CIDR_ALLOW_EXACT` and the `CIDR_ALLOW` trie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_new_entries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_entries: Option<u32>,
}

/// The whole desired state of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_block: Option<GeoBlockConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsConfig>,
}

/// Why a desired-state document was refused.
#[derive(Debug, thiserror::Error)]
pub enum DesiredStateError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: String, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl DesiredState {
    /// Apply-time limits and map capacities of this state.
    pub fn limits(&self) -> (crate::apply::Limits, crate::dataplane::Capacity) {
        let l = self.limits.clone().unwrap_or_default();
        let (dl, dc) = (crate::apply::Limits::default(), crate::dataplane::Capacity::default());
        let n = |v: Option<u32>, d: usize| v.map_or(d, |v| v as usize);
        let limits = crate::apply::Limits {
            max_instances: n(l.max_instances, dl.max_instances),
            max_rules_per_instance: n(l.max_rules_per_instance, dl.max_rules_per_instance),
            max_entries_per_instance: n(l.max_entries_per_instance, dl.max_entries_per_instance),
        };
        let capacity = crate::dataplane::Capacity {
            interfaces: l.max_instances.unwrap_or(dc.interfaces).max(1),
            port_class_entries: l.port_class_entries.unwrap_or(dc.port_class_entries),
            cidr_entries: l.cidr_entries.unwrap_or(dc.cidr_entries),
            ct_entries: l.conntrack_entries.unwrap_or(dc.ct_entries),
            ct_new_entries: l.conntrack_new_entries.unwrap_or(dc.ct_new_entries),
            geo_entries: l.geo_entries.unwrap_or(dc.geo_entries),
            rule_stats: dc.rule_stats,
        };
        (limits, capacity)
    }

    pub fn from_file(path: &Path) -> Result<Self, DesiredStateError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DesiredStateError::Read { path: path.display().to_string(), source })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and validates; `origin` names the document in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, DesiredStateError> {
        let state: DesiredState = if text.trim().is_empty() {
            DesiredState::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
                DesiredStateError::Syntax { path: origin.to_string(), line, column, message: e.to_string() }
            })?
        };
        state
            .validate()
            .map_err(|message| DesiredStateError::Invalid { path: origin.to_string(), message })?;
        Ok(state)
    }

    /// Checks the document as a whole (each rule was checked while reading).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(ct) = &self.conntrack {
            let t = ct.timeouts.resolve();
            let all = [t.tcp_syn, t.tcp_established, t.tcp_closing, t.udp, t.udp_stream, t.icmp, t.other];
            if all.contains(&0) {
                return Err("conntrack.timeouts: every timeout must be at least 1 second".into());
            }
        }
        if let Some(geo) = &self.geo_block {
            geo.validate()?;
        }
        if let Some(l) = &self.limits {
            let all = [
                l.max_instances,
                l.max_rules_per_instance,
                l.max_entries_per_instance,
                l.port_class_entries,
                l.cidr_entries,
                l.conntrack_entries,
                l.conntrack_new_entries,
                l.geo_entries,
            ];
            if all.contains(&Some(0)) {
                return Err("limits: every limit must be at least 1".into());
            }
        }
        let mut ids = BTreeSet::new();
        let mut ifaces = BTreeMap::new();
        let mut uuids = BTreeMap::new();
        for inst in &self.instances {
            if !ids.insert(&inst.id) {
                return Err(format!("instance {} is listed twice", inst.id));
            }
            validate_ifname(&inst.interface).map_err(|e| format!("instance {}: {e}", inst.id))?;
            if let Some(other) = ifaces.insert(&inst.interface, &inst.id) {
                return Err(format!(
                    "instances {other} and {} both use interface {}",
                    inst.id, inst.interface
                ));
            }
            for cidr in &inst.geo_exempt {
                let probe =
                    Rule::new(Direction::Ingress, EtherType::of_addr(&cidr.addr()), Protocol::Any, *cidr);
                probe.validate().map_err(|e| format!("instance {}, geo_exempt {cidr}: {e}", inst.id))?;
            }
            let rules = inst.effective_rules();
            for (i, spec) in rules.iter().enumerate() {
                spec.rule
                    .validate()
                    .map_err(|e: RuleError| format!("instance {}, rule {}: {e}", inst.id, i + 1))?;
                if let Some(j) = rules[..i].iter().position(|o| o.rule == spec.rule) {
                    return Err(format!(
                        "instance {}, rule {}: duplicate of rule {} ({}){}",
                        inst.id,
                        i + 1,
                        j + 1,
                        spec.rule,
                        rules[j].id.map(|u| format!(", id {u}")).unwrap_or_default()
                    ));
                }
                if spec.rule.opens_all_ports() && !spec.allow_all_ports {
                    return Err(format!(
                        "instance {}, rule {} ({}) opens every port to ingress; if that is really meant, \
                         confirm it with `allow_all_ports: true`",
                        inst.id,
                        i + 1,
                        spec.rule
                    ));
                }
                if let Some(id) = spec.id
                    && let Some(prev) = uuids.insert(id, &inst.id)
                {
                    return Err(format!("rule id {id} is used twice (instances {prev} and {})", inst.id));
                }
            }
        }
        Ok(())
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("invalid interface name `{name}`: 1-15 characters, no '/', ':' or spaces"));
    }
    Ok(())
}

/// Convenience for tests and the CLI: the rules of an instance as plain rules.
pub fn plain_rules(specs: &[RuleSpec]) -> Vec<Rule> {
    specs.iter().map(|s| s.rule.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<DesiredState, DesiredStateError> {
        DesiredState::from_yaml(y, "test.yaml")
    }

    #[test]
    fn the_issue_example_parses() {
        let s = parse(
            r#"
instances:
  - id: "937648"
    interface: tap937648
    os: linux
    rules:
      - direction: ingress
        ethertype: IPv4
        protocol: tcp
        port_min: 22
        port_max: 22
        cidr: 0.0.0.0/0
  - id: "892486"
    interface: tap892486
    os: windows
"#,
        )
        .unwrap();
        assert_eq!(s.instances.len(), 2);
        assert_eq!(s.instances[0].effective_rules().len(), 1);
        assert_eq!(s.instances[1].effective_rules().len(), 6);
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = parse("instances:\n  - id: a\n    interface: tap0\n    os: solaris\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("test.yaml:4:"), "{msg}");
        assert!(msg.contains("solaris"), "{msg}");
        let e = parse(
            "instances:\n  - id: a\n    interface: tap0\n    os: linux\n    rules:\n      - direction: ingress\n        ethertype: IPv4\n        protocol: tcp\n        port_min: 22\n        cidr: 10.0.0.1/0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("test.yaml:"), "{e}");
        assert!(e.contains("insecure"), "{e}");
        let e = parse("instances:\n  - id: a\n    interface: tap0\n    os: linux\n    colour: red\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn document_level_errors() {
        let dup =
            "instances:\n  - {id: a, interface: t0, os: linux}\n  - {id: a, interface: t1, os: linux}\n";
        assert!(parse(dup).unwrap_err().to_string().contains("instance a is listed twice"));
        let same_if =
            "instances:\n  - {id: a, interface: t0, os: linux}\n  - {id: b, interface: t0, os: linux}\n";
        assert!(parse(same_if).unwrap_err().to_string().contains("both use interface t0"));
        let wide = "instances:\n  - id: a\n    interface: t0\n    os: linux\n    rules:\n      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 1, port_max: 65535}\n";
        assert!(parse(wide).unwrap_err().to_string().contains("allow_all_ports"));
        let wide_ok = "instances:\n  - id: a\n    interface: t0\n    os: linux\n    rules:\n      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 1, port_max: 65535, allow_all_ports: true}\n";
        assert!(parse(wide_ok).is_ok());
        let dup_rule = "instances:\n  - id: a\n    interface: t0\n    os: linux\n    rules:\n      - {direction: ingress, ethertype: IPv4, protocol: tcp, port_min: 22}\n      - {direction: ingress, ethertype: IPv4, protocol: 6, port_min: 22, port_max: 22, cidr: 0.0.0.0/0}\n";
        assert!(parse(dup_rule).unwrap_err().to_string().contains("duplicate of rule 1"));
    }

    #[test]
    fn round_trip_keeps_everything() {
        let s = parse("instances:\n  - {id: a, interface: t0, os: windows}\n").unwrap();
        let mut s2 = s.clone();
        s2.instances[0].rules = Some(s.instances[0].effective_rules());
        let text = serde_yaml::to_string(&s2).unwrap();
        assert_eq!(parse(&text).unwrap(), s2);
    }
}
