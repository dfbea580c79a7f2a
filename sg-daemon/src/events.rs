//! Drop events (`sg-daemon events`): read from the kernel's ring buffer, named with the
//! instance and reason. The agent is the reader while it runs (a ring buffer has one
//! consumer position) and keeps the recent ones; without an agent the CLI reads it.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, RingBuf};
use serde::Serialize;
use sg_common::abi::{self, DropEvent, MAP_EVENTS, Reason};

use crate::desired::DesiredState;
use crate::netns;

/// The pinned ring buffer of drop events.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub fn open(bpffs: &Path) -> Result<Self> {
        let path = bpffs.join(MAP_EVENTS);
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(EventReader { ring: RingBuf::try_from(Map::RingBuf(data))? })
    }

    /// Every event waiting in the ring.
    pub fn drain(&mut self) -> Vec<DropEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<DropEvent>() {
                // SAFETY: the kernel wrote a DropEvent (repr(C), plain data); unaligned read.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DropEvent) });
            }
        }
        out
    }
}

/// A drop event as shown to operators.
#[derive(Clone, Debug, Serialize)]
pub struct EventRow {
    /// Seconds since boot (CLOCK_MONOTONIC, as the kernel stamps it).
    pub time_s: f64,
    pub instance: String,
    pub direction: &'static str,
    pub reason: &'static str,
    pub protocol: u8,
    pub src: String,
    pub dst: String,
    pub src_port: u16,
    pub dst_port: u16,
    /// Events the kernel's rate limit suppressed just before this one.
    pub suppressed: u64,
}

fn addr(family: u8, b: &[u8; 16]) -> String {
    match family {
        abi::FAMILY_V4 => IpAddr::from([b[0], b[1], b[2], b[3]]).to_string(),
        abi::FAMILY_V6 => IpAddr::from(*b).to_string(),
        _ => "-".into(),
    }
}

/// ifindex -> instance id, in the current network namespace.
pub fn instance_names(state: &DesiredState) -> BTreeMap<u32, String> {
    state
        .instances
        .iter()
        .filter_map(|i| netns::ifindex(&i.interface).map(|x| (x, i.id.to_string())))
        .collect()
}

pub fn describe(ev: &DropEvent, names: &BTreeMap<u32, String>) -> EventRow {
    EventRow {
        time_s: ev.timestamp_ns as f64 / 1e9,
        instance: names.get(&ev.ifindex).cloned().unwrap_or_else(|| format!("ifindex {}", ev.ifindex)),
        direction: if ev.direction == abi::DIR_INGRESS { "ingress" } else { "egress" },
        reason: Reason::from_code(ev.reason).map_or("?", Reason::as_str),
        protocol: ev.protocol,
        src: addr(ev.family, &ev.src),
        dst: addr(ev.family, &ev.dst),
        src_port: ev.src_port,
        dst_port: ev.dst_port,
        suppressed: ev.suppressed,
    }
}

pub fn format_row(r: &EventRow, json: bool) -> String {
    if json {
        return serde_json::to_string(r).unwrap_or_default();
    }
    format!(
        "{:>12.3} {:<10} {:<7} {:<11} proto {:<3} {}:{} -> {}:{}{}",
        r.time_s,
        r.instance,
        r.direction,
        r.reason,
        r.protocol,
        r.src,
        r.src_port,
        r.dst,
        r.dst_port,
        if r.suppressed > 0 { format!(" (+{} suppressed)", r.suppressed) } else { String::new() }
    )
}

/// The recent events the agent keeps for `events` without `-f`.
#[derive(Default)]
pub struct Recent {
    rows: VecDeque<EventRow>,
}

impl Recent {
    pub const CAPACITY: usize = 4096;

    pub fn push(&mut self, row: EventRow) {
        if self.rows.len() == Self::CAPACITY {
            self.rows.pop_front();
        }
        self.rows.push_back(row);
    }

    pub fn matching(&self, instance: Option<&str>) -> Vec<EventRow> {
        self.rows.iter().filter(|r| instance.is_none_or(|i| r.instance == i)).cloned().collect()
    }
}
