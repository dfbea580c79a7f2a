//! Listing tracked connections (`sg-daemon flows`).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Result, bail};
use serde::Serialize;
use sg_common::abi::{self, CtEntry, CtKey};

use crate::dataplane::Dataplane;
use crate::desired::DesiredState;
use crate::netns;

#[derive(Clone, Debug, Serialize)]
pub struct FlowRow {
    pub instance: String,
    pub protocol: String,
    pub instance_addr: String,
    pub remote_addr: String,
    /// Who opened the flow: "out" (the instance) or "in" (the remote).
    pub opened_by: &'static str,
    pub state: &'static str,
    pub confirmed: bool,
    pub age_s: f64,
    pub idle_s: f64,
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        abi::CT_TCP_SYN_SENT => "syn-sent",
        abi::CT_TCP_SYN_RECV => "syn-recv",
        abi::CT_TCP_ESTABLISHED => "established",
        abi::CT_TCP_CLOSING => "closing",
        abi::CT_TCP_CLOSED => "closed",
        abi::CT_UNREPLIED => "unreplied",
        abi::CT_REPLIED => "replied",
        _ => "?",
    }
}

fn addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == abi::FAMILY_V4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

fn endpoint(key: &CtKey, bytes: &[u8; 16], port: u16) -> String {
    let a = addr(key.family, bytes);
    match (key.protocol, a) {
        (abi::IPPROTO_TCP | abi::IPPROTO_UDP, IpAddr::V4(v4)) => format!("{v4}:{port}"),
        (abi::IPPROTO_TCP | abi::IPPROTO_UDP, IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        (abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6, a) => format!("{a} id {port}"),
        (_, a) => a.to_string(),
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        abi::IPPROTO_TCP => "tcp".into(),
        abi::IPPROTO_UDP => "udp".into(),
        abi::IPPROTO_ICMP => "icmp".into(),
        abi::IPPROTO_ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, which stamps
/// flows and events.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Live flows (expired entries are hidden), optionally of one instance.
pub fn list(dp: &Dataplane, state: &DesiredState, instance: Option<&str>) -> Result<Vec<FlowRow>> {
    let by_ifindex: BTreeMap<u32, String> = state
        .instances
        .iter()
        .filter_map(|i| netns::ifindex(&i.interface).map(|idx| (idx, i.id.to_string())))
        .collect();
    if let Some(id) = instance
        && !state.instances.iter().any(|i| i.id.as_str() == id)
    {
        bail!("no instance {id}");
    }
    let timeouts = dp.timeouts()?;
    let now = monotonic_ns();
    let mut rows = Vec::new();
    for (key, entry, confirmed) in dp.flows()? {
        let CtEntry { last_seen_ns, created_ns, state, origin, .. } = entry;
        let idle = now.saturating_sub(last_seen_ns);
        if idle > u64::from(timeouts.for_state(key.protocol, state)) * 1_000_000_000 {
            continue;
        }
        let name =
            by_ifindex.get(&key.ifindex).cloned().unwrap_or_else(|| format!("ifindex {}", key.ifindex));
        if instance.is_some_and(|i| i != name) {
            continue;
        }
        rows.push(FlowRow {
            instance: name,
            protocol: protocol_name(key.protocol),
            instance_addr: endpoint(&key, &key.addr_inst, key.port_inst),
            remote_addr: endpoint(&key, &key.addr_remote, key.port_remote),
            opened_by: if origin == abi::DIR_EGRESS { "out" } else { "in" },
            state: state_name(state),
            confirmed,
            age_s: now.saturating_sub(created_ns) as f64 / 1e9,
            idle_s: idle as f64 / 1e9,
        });
    }
    rows.sort_by(|a, b| {
        (&a.instance, &a.instance_addr, &a.remote_addr).cmp(&(&b.instance, &b.instance_addr, &b.remote_addr))
    });
    Ok(rows)
}

pub fn table(rows: &[FlowRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<6} {:<28} {:<28} {:<4} {:<12} {:>9} {:>8}",
        "Instance", "Proto", "Instance side", "Remote side", "Open", "State", "Age (s)", "Idle (s)"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<10} {:<6} {:<28} {:<28} {:<4} {:<12} {:>9.1} {:>8.1}",
            r.instance, r.protocol, r.instance_addr, r.remote_addr, r.opened_by, r.state, r.age_s, r.idle_s
        );
    }
    out
}
