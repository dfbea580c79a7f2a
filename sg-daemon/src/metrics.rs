//! Prometheus metrics of the agent (`sg-daemon run --metrics ADDR`): packets per
//! instance and reason, conntrack and map usage against capacity, geo prefixes, apply
//! durations and errors. Served as text on `GET /metrics`; binds where told (the unit
//! file and docs use 127.0.0.1).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::Global;
use crate::dataplane::Dataplane;
use crate::netns;
use crate::state::StateStore;

/// Counters kept by the agent itself.
#[derive(Debug, Default)]
pub struct Metrics {
    pub commands: AtomicU64,
    pub command_errors: AtomicU64,
    pub apply_errors: AtomicU64,
    pub last_apply_us: AtomicU64,
    pub applies: AtomicU64,
}

impl Metrics {
    pub fn record_apply(&self, took: Duration) {
        self.applies.fetch_add(1, Ordering::Relaxed);
        self.last_apply_us.store(took.as_micros() as u64, Ordering::Relaxed);
    }
}

pub async fn serve(addr: SocketAddr, g: Global, metrics: Arc<Metrics>) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics on /metrics");
    loop {
        let (mut stream, _) = listener.accept().await?;
        let (g, m) = (g.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                match tokio::task::spawn_blocking(move || render(&g, &m)).await {
                    Ok(Ok(text)) => ("200 OK", text),
                    Ok(Err(e)) => ("500 Internal Server Error", format!("# error: {e:#}\n")),
                    Err(e) => ("500 Internal Server Error", format!("# error: {e}\n")),
                }
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

/// The metrics text, read from the pinned maps.
pub fn render(g: &Global, m: &Metrics) -> Result<String> {
    let state = StateStore::open_locked(&g.state_dir)?.load()?;
    let dp = Dataplane::open(&g.bpffs, state.limits().1)?;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP sg_packets_total Packets per instance and verdict reason.");
    let _ = writeln!(out, "# TYPE sg_packets_total counter");
    for inst in &state.instances {
        let Some(idx) = netns::ifindex(&inst.interface) else { continue };
        for (reason, n) in dp.iface_counts(idx)? {
            let verdict = if reason.is_allow() { "pass" } else { "drop" };
            let _ = writeln!(
                out,
                "sg_packets_total{{instance=\"{}\",reason=\"{}\",verdict=\"{verdict}\"}} {n}",
                inst.id,
                reason.as_str()
            );
        }
    }
    let _ = writeln!(out, "# HELP sg_host_packets_total Packets of all instances per verdict reason.");
    let _ = writeln!(out, "# TYPE sg_host_packets_total counter");
    for (reason, n) in dp.verdict_counts()? {
        let _ = writeln!(out, "sg_host_packets_total{{reason=\"{}\"}} {n}", reason.as_str());
    }
    let flows = dp.flows()?;
    let confirmed = flows.iter().filter(|f| f.2).count();
    let cap = dp.capacity;
    let _ = writeln!(
        out,
        "# HELP sg_conntrack_entries Tracked flows per table (expired ones included until reused)."
    );
    let _ = writeln!(out, "# TYPE sg_conntrack_entries gauge");
    let _ = writeln!(out, "sg_conntrack_entries{{table=\"confirmed\"}} {confirmed}");
    let _ = writeln!(out, "sg_conntrack_entries{{table=\"unconfirmed\"}} {}", flows.len() - confirmed);
    let _ = writeln!(out, "# TYPE sg_conntrack_capacity gauge");
    let _ = writeln!(out, "sg_conntrack_capacity{{table=\"confirmed\"}} {}", cap.ct_entries);
    let _ = writeln!(out, "sg_conntrack_capacity{{table=\"unconfirmed\"}} {}", cap.ct_new_entries);
    let geo = dp.geo_config()?;
    let geo_len = if geo.set_id != 0 { dp.geo_set_len(geo.set_id)? } else { 0 };
    let _ = writeln!(out, "# HELP sg_geo_prefixes Networks in the geo-block prefix set in force.");
    let _ = writeln!(out, "# TYPE sg_geo_prefixes gauge");
    let _ = writeln!(out, "sg_geo_prefixes {geo_len}");
    let _ = writeln!(out, "# TYPE sg_map_capacity gauge");
    let _ = writeln!(out, "sg_map_capacity{{map=\"IFACE_POLICY\"}} {}", cap.interfaces);
    for map in ["PORT_CLASS", "PORT_CLASS_EXACT"] {
        let _ = writeln!(out, "sg_map_capacity{{map=\"{map}\"}} {}", cap.port_class_entries);
    }
    for map in ["CIDR_ALLOW", "CIDR_ALLOW_EXACT"] {
        let _ = writeln!(out, "sg_map_capacity{{map=\"{map}\"}} {}", cap.cidr_entries);
    }
    let _ = writeln!(out, "sg_map_capacity{{map=\"GEO_BLOCK\"}} {}", cap.geo_entries);
    let usage = dp.trie_usage()?;
    let _ = writeln!(out, "# TYPE sg_map_entries gauge");
    let _ = writeln!(out, "sg_map_entries{{map=\"IFACE_POLICY\"}} {}", dp.bindings()?.len());
    for (map, n) in [
        ("PORT_CLASS", usage.port_entries),
        ("PORT_CLASS_EXACT", usage.port_exact_entries),
        ("CIDR_ALLOW", usage.cidr_entries),
        ("CIDR_ALLOW_EXACT", usage.cidr_exact_entries),
    ] {
        let _ = writeln!(out, "sg_map_entries{{map=\"{map}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE sg_agent_commands_total counter");
    let _ = writeln!(out, "sg_agent_commands_total {}", m.commands.load(Ordering::Relaxed));
    let _ = writeln!(out, "# TYPE sg_agent_command_errors_total counter");
    let _ = writeln!(out, "sg_agent_command_errors_total {}", m.command_errors.load(Ordering::Relaxed));
    let _ = writeln!(out, "# TYPE sg_apply_errors_total counter");
    let _ = writeln!(out, "sg_apply_errors_total {}", m.apply_errors.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP sg_last_command_duration_seconds Duration of the last apply or command.");
    let _ = writeln!(out, "# TYPE sg_last_command_duration_seconds gauge");
    let _ = writeln!(
        out,
        "sg_last_command_duration_seconds {}",
        m.last_apply_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    Ok(out)
}
