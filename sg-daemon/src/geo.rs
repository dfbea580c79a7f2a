//! Adapter: the geo block's prefix set, read from a MaxMind-format country database
//! (`sg-geo`) and swapped into the `GEO_BLOCK` trie without a window: the new set is
//! written under a fresh set id, `GEO_CONFIG` is switched with one update, then the old
//! set is deleted. Reloading is skipped when the database file and the country list
//! are unchanged (a fingerprint is kept in the state directory).

use std::fs;
use std::path::Path;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use sg_common::abi::{GEO_MAX_PORT_RANGES, GeoConfig};
use sg_geo::CountryPrefixes;
use tracing::info;

use crate::desired::GeoBlockConfig;

/// What an apply does to the geo block.
pub enum GeoPlan {
    /// No geo block configured: switch it off.
    Off,
    /// The prefix set in the kernel is current: only the port/protocol config is rewritten.
    Keep { config: GeoConfig },
    /// Load this prefix set.
    Load { config: GeoConfig, prefixes: Box<CountryPrefixes>, fingerprint: String },
}

/// Identifies a database file and country list: path, size, mtime, countries.
pub fn fingerprint(cfg: &GeoBlockConfig) -> Result<String> {
    let meta = fs::metadata(&cfg.database)
        .with_context(|| format!("geo_block.database {}: cannot read", cfg.database.display()))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos());
    let mut countries: Vec<String> = cfg.countries.iter().map(|c| c.to_ascii_uppercase()).collect();
    countries.sort();
    Ok(format!("{} {} {:?} {}", cfg.database.display(), meta.len(), mtime, countries.join(",")))
}

fn fingerprint_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("geo.loaded")
}

/// The port/protocol part of the kernel config (set id filled in at apply).
pub fn kernel_config(cfg: &GeoBlockConfig) -> GeoConfig {
    let mut out = GeoConfig {
        protocol: cfg.protocol.number().unwrap_or(0),
        n_ranges: cfg.ports.len().min(GEO_MAX_PORT_RANGES) as u8,
        ..Default::default()
    };
    for (slot, p) in out.ranges.iter_mut().zip(&cfg.ports) {
        *slot = [p.0.min, p.0.max];
    }
    out
}

/// Whether the kernel's prefix set `current_set` was loaded from this very database
/// file and country list (as recorded by [`record`]).
pub fn is_loaded(cfg: &GeoBlockConfig, state_dir: &Path, current_set: u32) -> Result<bool> {
    let stored = fs::read_to_string(fingerprint_path(state_dir)).unwrap_or_default();
    Ok(current_set != 0 && stored == format!("{current_set} {}", fingerprint(cfg)?))
}

/// Decides (and, when needed, reads the database for) the geo part of an apply.
/// `current_set` is the set id in force in the kernel. Nothing is changed here.
pub fn plan(
    cfg: Option<&GeoBlockConfig>,
    state_dir: &Path,
    current_set: u32,
    force_reload: bool,
) -> Result<GeoPlan> {
    let Some(cfg) = cfg else { return Ok(GeoPlan::Off) };
    let countries = cfg.validate().map_err(anyhow::Error::msg)?;
    let config = kernel_config(cfg);
    if !force_reload && is_loaded(cfg, state_dir, current_set)? {
        return Ok(GeoPlan::Keep { config });
    }
    let fp = fingerprint(cfg)?;
    let started = std::time::Instant::now();
    let prefixes = sg_geo::load_country_prefixes(&cfg.database, &countries)
        .with_context(|| format!("geo_block: loading {}", cfg.database.display()))?;
    info!(
        networks = prefixes.networks_read,
        v4 = prefixes.v4.len(),
        v6 = prefixes.v6.len(),
        ms = started.elapsed().as_millis() as u64,
        "geo database read"
    );
    Ok(GeoPlan::Load { config, prefixes: Box::new(prefixes), fingerprint: fp })
}

/// Records which set is loaded, after a successful apply.
pub fn record(state_dir: &Path, set_id: u32, fingerprint: &str) -> Result<()> {
    let path = fingerprint_path(state_dir);
    let tmp = state_dir.join(".geo.loaded.tmp");
    fs::write(&tmp, format!("{set_id} {fingerprint}"))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}
