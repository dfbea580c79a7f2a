//! The operator commands (twccli-style: ls, create, rm, instance add/rm, apply, ...),
//! executed in-process: by the CLI directly, or by the agent for a CLI that forwarded
//! its arguments over the control socket. Output is collected, not printed, so both
//! paths produce the same bytes.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::apply;
use crate::dataplane::Dataplane;
use crate::desired::{DesiredState, InstanceId, InstanceSpec, RuleSpec, validate_ifname};
use crate::events;
use crate::flows;
use crate::geo;
use crate::netns;
use crate::plan::plan;
use crate::state::StateStore;
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use serde::Serialize;
use sg_common::model::{Direction, EtherType, Os, PortRange, Protocol, Rule};

/// Output of a command: what goes to stdout and to stderr.
#[derive(Debug, Default)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
}

macro_rules! out {
    ($o:expr, $($t:tt)*) => {{ let _ = write!($o.stdout, $($t)*); }};
}
macro_rules! outln {
    ($o:expr, $($t:tt)*) => {{ let _ = writeln!($o.stdout, $($t)*); }};
}
macro_rules! errln {
    ($o:expr, $($t:tt)*) => {{ let _ = writeln!($o.stderr, $($t)*); }};
}

#[derive(Parser)]
#[command(name = "sg-daemon", version, about = "Security-group enforcement with eBPF")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone, Debug)]
pub struct Global {
    /// bpffs directory holding the pinned programs, links and maps.
    #[arg(long, global = true, env = "SG_BPFFS", default_value = "/sys/fs/bpf/sg")]
    pub bpffs: PathBuf,
    /// Directory of the stored desired state.
    #[arg(long, global = true, env = "SG_STATE_DIR", default_value = "/var/lib/sg")]
    pub state_dir: PathBuf,
    /// Network namespace holding the instances' host-side interfaces.
    #[arg(long, global = true, env = "SG_NETNS")]
    pub netns: Option<String>,
    /// Control socket of the agent; commands are forwarded to it when an agent listens.
    #[arg(long, global = true, env = "SG_SOCKET", default_value = "/run/sg/sg.sock")]
    pub socket: PathBuf,
    /// Output format of listings.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make the kernel match a desired-state file (instances absent from it lose enforcement).
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
    },
    /// List instances, or the rules of one instance.
    Ls {
        #[arg(short = 's', long = "server")]
        instance: Option<String>,
    },
    /// Add one rule to an instance; prints its UUID.
    Create(CreateArgs),
    /// Delete a rule by its UUID or a unique prefix of at least 8 characters.
    Rm { rule_id: String },
    /// Manage instances.
    Instance {
        #[command(subcommand)]
        command: InstanceCommand,
    },
    /// Packet counters per verdict reason (host-wide, or of one instance).
    Stats {
        #[arg(short = 's', long = "server")]
        instance: Option<String>,
    },
    /// Geo-blocking: status, or reload the country database.
    Geo {
        #[command(subcommand)]
        command: GeoCommand,
    },
    /// Tracked connections with their state and age.
    Flows {
        #[arg(short = 's', long = "server")]
        instance: Option<String>,
    },
    /// Dropped packets with instance, direction, 5-tuple and reason.
    Events {
        #[arg(short = 's', long = "server")]
        instance: Option<String>,
        /// Keep streaming new events.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Remove every program, link, map and pin (enforcement stops).
    Uninstall,
    /// Run the host agent: adopt or load the data plane, reconcile it with the stored
    /// state, serve the operator commands on the control socket.
    Run(AgentArgs),
}

/// Options of `sg-daemon run`.
#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9469); off by default.
    #[arg(long, env = "SG_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Group (gid) allowed on the control socket besides root.
    #[arg(long, env = "SG_SOCKET_GID")]
    pub socket_gid: Option<u32>,
    /// Seconds between checks of the geo database file for changes.
    #[arg(long, default_value_t = 10)]
    pub geo_watch_secs: u64,
}

#[derive(Subcommand)]
pub enum GeoCommand {
    /// Database, countries, prefixes loaded and blocked packets per instance.
    Status,
    /// Re-read the database and swap the prefix set in (no window without blocking).
    Reload,
}

#[derive(Subcommand)]
pub enum InstanceCommand {
    /// Manage a new instance with the default rules of its OS.
    Add {
        id: String,
        #[arg(long)]
        iface: String,
        #[arg(long, value_parser = clap::value_parser!(Os))]
        os: Os,
    },
    /// Stop managing an instance.
    Rm { id: String },
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(short = 's', long = "server")]
    pub instance: String,
    #[arg(long = "in", conflicts_with = "egress", required_unless_present = "egress")]
    pub ingress: bool,
    #[arg(long = "out")]
    pub egress: bool,
    #[arg(long = "proto", value_parser = clap::value_parser!(Protocol))]
    pub protocol: Protocol,
    /// PORT or MIN-MAX.
    #[arg(short = 'p', long = "port", value_parser = clap::value_parser!(PortRange))]
    pub ports: Option<PortRange>,
    /// Remote network; defaults to 0.0.0.0/0 (or ::/0 with --ipv6).
    #[arg(long)]
    pub cidr: Option<IpNet>,
    #[arg(long)]
    ipv6: bool,
    #[arg(long)]
    pub icmp_type: Option<u8>,
    #[arg(long)]
    pub icmp_code: Option<u8>,
    /// Confirm an ingress rule that opens every port.
    #[arg(long)]
    pub force: bool,
}

/// Runs one command; what it prints goes to `o`.
pub fn execute(g: &Global, command: Command, o: &mut Out) -> Result<()> {
    let g = g.clone();
    match command {
        Command::Apply { file, dry_run } => {
            let desired = DesiredState::from_file(&file)?;
            let store = StateStore::open_locked(&g.state_dir)?;
            commit(&g, &store, desired, dry_run, o)
        }
        Command::Ls { instance } => {
            let store = StateStore::open_locked(&g.state_dir)?;
            list(&g, &store.load()?, instance.as_deref(), o)
        }
        Command::Create(args) => create(&g, args, o),
        Command::Rm { rule_id } => remove_rule(&g, &rule_id, o),
        Command::Instance { command } => {
            let store = StateStore::open_locked(&g.state_dir)?;
            let mut state = store.load()?;
            match command {
                InstanceCommand::Add { id, iface, os } => {
                    let id = InstanceId::try_from(id).map_err(anyhow::Error::msg)?;
                    validate_ifname(&iface).map_err(anyhow::Error::msg)?;
                    if state.instances.iter().any(|i| i.id == id) {
                        bail!("instance {id} exists already");
                    }
                    state.instances.push(InstanceSpec {
                        id,
                        interface: iface,
                        os,
                        rules: None,
                        geo_exempt: Vec::new(),
                        audit: false,
                    });
                }
                InstanceCommand::Rm { id } => {
                    let before = state.instances.len();
                    state.instances.retain(|i| i.id.as_str() != id);
                    if state.instances.len() == before {
                        bail!("no instance {id}");
                    }
                }
            }
            commit(&g, &store, state, false, o)
        }
        Command::Flows { instance } => {
            let state = StateStore::open_locked(&g.state_dir)?.load()?;
            let dp = open_dataplane(&g)?;
            let rows = flows::list(&dp, &state, instance.as_deref())?;
            if g.output == Output::Json {
                outln!(o, "{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!(o, "{}", flows::table(&rows));
            }
            Ok(())
        }
        Command::Geo { command: GeoCommand::Reload } => {
            let store = StateStore::open_locked(&g.state_dir)?;
            let state = store.load()?;
            if state.geo_block.is_none() {
                bail!("no geo_block configured in the stored state ({})", store.path().display());
            }
            apply_and_save(&g, &store, &state, true)?;
            outln!(o, "geo prefix set reloaded");
            Ok(())
        }
        Command::Geo { command: GeoCommand::Status } => {
            let state = StateStore::open_locked(&g.state_dir)?.load()?;
            let dp = open_dataplane(&g)?;
            let cfg = dp.geo_config()?;
            let prefixes = if cfg.set_id != 0 { dp.geo_set_len(cfg.set_id)? } else { 0 };
            let mut per_instance = std::collections::BTreeMap::new();
            for inst in &state.instances {
                if let Some(idx) = netns::ifindex(&inst.interface) {
                    let on = state.geo_block.as_ref().is_some_and(|g| g.applies_to(inst.os));
                    per_instance.insert(
                        inst.id.to_string(),
                        serde_json::json!({"geo_block": on, "blocked": dp.iface_counts(idx)?[&sg_common::abi::Reason::DropGeo]}),
                    );
                }
            }
            let status = serde_json::json!({
                "enabled": cfg.set_id != 0,
                "database": state.geo_block.as_ref().map(|g| g.database.display().to_string()),
                "countries": state.geo_block.as_ref().map(|g| g.countries.clone()),
                "protocol": cfg.protocol,
                "ports": cfg.ranges[..usize::from(cfg.n_ranges)].iter().map(|r| format!("{}-{}", r[0], r[1])).collect::<Vec<_>>(),
                "prefixes_loaded": prefixes,
                "instances": per_instance,
            });
            outln!(o, "{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Stats { instance } => {
            let dp = open_dataplane(&g)?;
            let counts = match instance {
                None => dp.verdict_counts()?,
                Some(id) => {
                    let state = StateStore::open_locked(&g.state_dir)?.load()?;
                    let inst = state
                        .instances
                        .iter()
                        .find(|i| i.id.as_str() == id)
                        .with_context(|| format!("no instance {id}"))?;
                    let idx = netns::ifindex(&inst.interface)
                        .with_context(|| format!("interface {} not found", inst.interface))?;
                    dp.iface_counts(idx)?
                }
            };
            if g.output == Output::Json {
                let m: std::collections::BTreeMap<&str, u64> =
                    counts.iter().map(|(r, n)| (r.as_str(), *n)).collect();
                outln!(o, "{}", serde_json::to_string_pretty(&m)?);
            } else {
                for (reason, n) in counts {
                    outln!(
                        o,
                        "{:<14} {:>12}  {}",
                        reason.as_str(),
                        n,
                        if reason.is_allow() { "pass" } else { "drop" }
                    );
                }
            }
            Ok(())
        }
        Command::Uninstall => {
            Dataplane::uninstall(&g.bpffs)?;
            outln!(o, "removed {}", g.bpffs.display());
            Ok(())
        }
        Command::Run(_) => bail!("`run` starts the agent; it cannot run inside another command"),
        Command::Events { instance, follow } => {
            let names = events::instance_names(&StateStore::open_locked(&g.state_dir)?.load()?);
            let mut reader = events::EventReader::open(&g.bpffs)?;
            loop {
                for ev in reader.drain() {
                    let row = events::describe(&ev, &names);
                    if instance.as_deref().is_none_or(|i| row.instance == i) {
                        outln!(o, "{}", events::format_row(&row, g.output == Output::Json));
                    }
                }
                if !follow {
                    return Ok(());
                }
                // Following locally: flush what we have and keep polling.
                print!("{}", std::mem::take(&mut o.stdout));
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}

/// Opens the data plane with the capacities the stored state asks for.
fn open_dataplane(g: &Global) -> Result<Dataplane> {
    let state = StateStore::open_locked(&g.state_dir)?.load()?;
    open_dataplane_for(g, &state)
}

fn open_dataplane_for(g: &Global, state: &DesiredState) -> Result<Dataplane> {
    Dataplane::open(&g.bpffs, state.limits().1)
}

/// Makes the kernel match the stored state (agent start-up).
pub fn reconcile(g: &Global, o: &mut Out) -> Result<()> {
    let store = StateStore::open_locked(&g.state_dir)?;
    let state = store.load()?;
    apply_and_save(g, &store, &state, false)?;
    outln!(o, "reconciled {} instances with {}", state.instances.len(), store.path().display());
    Ok(())
}

/// Reloads the geo database if its file changed since it was loaded (agent watcher).
pub fn geo_refresh(g: &Global) -> Result<bool> {
    let store = StateStore::open_locked(&g.state_dir)?;
    let state = store.load()?;
    let Some(cfg) = &state.geo_block else { return Ok(false) };
    let dp = open_dataplane_for(g, &state)?;
    let set = dp.geo_config()?.set_id;
    drop(dp);
    if geo::is_loaded(cfg, &g.state_dir, set)? {
        return Ok(false);
    }
    apply_and_save(g, &store, &state, true)?;
    Ok(true)
}

/// Applies a resolved state (geo database included) and stores it.
fn apply_and_save(
    g: &Global,
    store: &StateStore,
    resolved: &DesiredState,
    force_geo_reload: bool,
) -> Result<()> {
    let (limits, capacity) = resolved.limits();
    // Every check that needs no kernel state, before the data plane is even opened.
    let prepared = apply::prepare(resolved, &limits)?;
    let mut dp = Dataplane::open(&g.bpffs, capacity)?;
    // Applying is where a new binary's programs replace the pinned ones.
    dp.ensure_programs()?;
    let current_set = dp.geo_config()?.set_id;
    // Reads the database (when needed) before anything changes.
    let geo_plan = geo::plan(resolved.geo_block.as_ref(), &g.state_dir, current_set, force_geo_reload)?;
    let loaded = apply::apply(&mut dp, resolved, prepared, geo_plan)?;
    store.save(resolved)?;
    if let Some((set_id, fingerprint)) = loaded {
        geo::record(&g.state_dir, set_id, &fingerprint)?;
    }
    Ok(())
}

/// Plans, applies and stores `desired` (or only prints the plan).
fn commit(g: &Global, store: &StateStore, desired: DesiredState, dry_run: bool, o: &mut Out) -> Result<()> {
    desired.validate().map_err(anyhow::Error::msg)?;
    let current = store.load()?;
    let (resolved, plan) = plan(&current, &desired);
    for w in &plan.warnings {
        errln!(o, "{w}");
    }
    if dry_run {
        // The checks a real apply makes before touching the kernel, so a dry run
        // refuses what the apply would refuse.
        apply::prepare(&resolved, &resolved.limits().0)?;
        out!(o, "{plan}");
        outln!(o, "(dry run: nothing changed)");
        return Ok(());
    }
    apply_and_save(g, store, &resolved, false)?;
    if g.output == Output::Table {
        out!(o, "{plan}");
    }
    Ok(())
}

#[derive(Serialize)]
pub struct RuleRow {
    id: String,
    direction: Direction,
    ethertype: EtherType,
    port_min: Option<u16>,
    port_max: Option<u16>,
    protocol: String,
    cidr: IpNet,
    /// Packets and bytes this rule allowed (new flows and stateless matches; replies
    /// riding a tracked flow are counted under `stats`), when the data plane is up.
    packets: Option<u64>,
    bytes: Option<u64>,
}

fn list(g: &Global, state: &DesiredState, instance: Option<&str>, o: &mut Out) -> Result<()> {
    match instance {
        None => {
            if g.output == Output::Json {
                #[derive(Serialize)]
                struct Row<'a> {
                    id: &'a str,
                    interface: &'a str,
                    os: Os,
                    rules: usize,
                }
                let rows: Vec<Row> = state
                    .instances
                    .iter()
                    .map(|i| Row {
                        id: i.id.as_str(),
                        interface: &i.interface,
                        os: i.os,
                        rules: i.effective_rules().len(),
                    })
                    .collect();
                outln!(o, "{}", serde_json::to_string_pretty(&rows)?);
            } else {
                outln!(o, "{:<16} {:<16} {:<8} {:>5}", "Instance", "Interface", "OS", "Rules");
                for i in &state.instances {
                    outln!(
                        o,
                        "{:<16} {:<16} {:<8} {:>5}",
                        i.id,
                        i.interface,
                        i.os,
                        i.effective_rules().len()
                    );
                }
            }
        }
        Some(id) => {
            let inst = state
                .instances
                .iter()
                .find(|i| i.id.as_str() == id)
                .with_context(|| format!("no instance {id}"))?;
            // Counters are best effort: listing works without a data plane, and never
            // creates one.
            let counts = netns::ifindex(&inst.interface)
                .filter(|_| g.bpffs.join(sg_common::abi::MAP_IFACE_POLICY).exists())
                .and_then(|idx| open_dataplane_for(g, state).ok().and_then(|dp| dp.rule_counts(idx).ok()))
                .unwrap_or_default();
            let rows: Vec<RuleRow> = inst
                .effective_rules()
                .iter()
                .map(|s| {
                    let hits = s.id.as_ref().and_then(|u| counts.get(&apply::rule_handle(u)));
                    let r = &s.rule;
                    let (pmin, pmax) = match (r.ports, r.icmp_type) {
                        (Some(p), _) => (Some(p.min), Some(p.max)),
                        (None, Some(t)) => (Some(u16::from(t)), r.icmp_code.map(u16::from)),
                        _ => (None, None),
                    };
                    RuleRow {
                        id: s.id.map(|u| u.to_string()).unwrap_or_default(),
                        direction: r.direction,
                        ethertype: r.ethertype,
                        port_min: pmin,
                        port_max: pmax,
                        protocol: r.protocol.to_string(),
                        cidr: r.cidr,
                        packets: hits.map(|h| h.0),
                        bytes: hits.map(|h| h.1),
                    }
                })
                .collect();
            if g.output == Output::Json {
                outln!(o, "{}", serde_json::to_string_pretty(&rows)?);
            } else {
                outln!(
                    o,
                    "{:<9} {:<17} {:<14} {:<14} {:<8} {:<20} {:>10} {:>12} Rule ID",
                    "Direction",
                    "Internet protocol",
                    "Port (minimum)",
                    "Port (maximum)",
                    "Protocol",
                    "CIDR",
                    "Packets",
                    "Bytes",
                );
                let opt = |p: Option<u16>| p.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                for r in rows {
                    outln!(
                        o,
                        "{:<9} {:<17} {:<14} {:<14} {:<8} {:<20} {:>10} {:>12} {}",
                        r.direction.as_str(),
                        r.ethertype.to_string(),
                        opt(r.port_min),
                        opt(r.port_max),
                        r.protocol,
                        r.cidr.to_string(),
                        r.packets.map_or("-".to_string(), |p| p.to_string()),
                        r.bytes.map_or("-".to_string(), |b| b.to_string()),
                        r.id
                    );
                }
            }
        }
    }
    Ok(())
}

fn create(g: &Global, a: CreateArgs, o: &mut Out) -> Result<()> {
    let store = StateStore::open_locked(&g.state_dir)?;
    let mut state = store.load()?;
    let ethertype =
        if a.ipv6 || matches!(a.cidr, Some(IpNet::V6(_))) { EtherType::IPv6 } else { EtherType::IPv4 };
    let direction = if a.ingress { Direction::Ingress } else { Direction::Egress };
    let rule = Rule {
        direction,
        ethertype,
        protocol: a.protocol,
        ports: a.ports,
        icmp_type: a.icmp_type,
        icmp_code: a.icmp_code,
        cidr: a.cidr.unwrap_or_else(|| ethertype.any_cidr()),
    };
    rule.validate().with_context(|| format!("rule {rule}"))?;
    if rule.opens_all_ports() && !a.force {
        bail!("rule {rule} opens every port to ingress; add --force if that is really meant");
    }
    let inst = state
        .instances
        .iter_mut()
        .find(|i| i.id.as_str() == a.instance)
        .with_context(|| format!("no instance {}", a.instance))?;
    let mut rules = inst.effective_rules();
    if let Some(existing) = rules.iter().find(|s| s.rule == rule) {
        bail!(
            "rule {rule} exists already as {}",
            existing.id.map(|u| u.to_string()).unwrap_or_else(|| "(unsaved)".into())
        );
    }
    // Give the existing rules their stored ids before adding.
    let id = uuid::Uuid::new_v4();
    rules.push(RuleSpec { id: Some(id), rule, allow_all_ports: a.force });
    inst.rules = Some(rules);
    let (resolved, _) = plan(&store.load()?, &state);
    apply_and_save(g, &store, &resolved, false)?;
    outln!(o, "{id}");
    Ok(())
}

fn remove_rule(g: &Global, prefix: &str, o: &mut Out) -> Result<()> {
    let store = StateStore::open_locked(&g.state_dir)?;
    let mut state = store.load()?;
    let all: Vec<(String, uuid::Uuid, String)> = state
        .instances
        .iter()
        .flat_map(|i| {
            i.effective_rules()
                .into_iter()
                .filter_map(move |s| s.id.map(|u| (i.id.to_string(), u, s.rule.to_string())))
        })
        .collect();
    let prefix_lc = prefix.to_ascii_lowercase();
    let candidates: Vec<&(String, uuid::Uuid, String)> =
        all.iter().filter(|(_, u, _)| u.to_string().starts_with(&prefix_lc)).collect();
    let describe = |c: &[&(String, uuid::Uuid, String)]| {
        c.iter().map(|(i, u, t)| format!("\n  {u}  instance {i}: {t}")).collect::<String>()
    };
    if prefix.len() < 8 {
        bail!("rule id prefix `{prefix}` is too short: give at least 8 characters{}", describe(&candidates));
    }
    let (inst_id, uuid) = match candidates.as_slice() {
        [] => bail!("no rule with id starting `{prefix}`"),
        [one] => (one.0.clone(), one.1),
        many => bail!("rule id prefix `{prefix}` is ambiguous; candidates:{}", describe(many)),
    };
    let inst = state.instances.iter_mut().find(|i| i.id.as_str() == inst_id).expect("listed above");
    let mut rules = inst.effective_rules();
    rules.retain(|s| s.id != Some(uuid));
    inst.rules = Some(rules);
    let (resolved, _) = plan(&store.load()?, &state);
    apply_and_save(g, &store, &resolved, false)?;
    outln!(o, "deleted {uuid} from instance {inst_id}");
    Ok(())
}
