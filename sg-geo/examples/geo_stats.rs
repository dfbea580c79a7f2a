//! Loads a real GeoIP database and prints what the loader makes of it.
//!
//! ```text
//! cargo run --release -p sg-geo --example geo_stats -- PATH.mmdb [COUNTRIES]
//! ```
//!
//! `COUNTRIES` is a list such as `CN,DE,RU` (default: `sg_geo::DEFAULT_BLOCKED`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use sg_geo::{CountryCode, load_country_prefixes};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: geo_stats PATH.mmdb [COUNTRIES, e.g. CN,DE,RU]");
        return ExitCode::from(2);
    };
    let rest = args.collect::<Vec<_>>().join(",");
    let countries = if rest.is_empty() {
        CountryCode::default_blocked()
    } else {
        match CountryCode::parse_list(&rest) {
            Ok(countries) => countries,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        }
    };

    let rss_before = vm_kib("VmRSS");
    let start = Instant::now();
    let prefixes = match load_country_prefixes(&path, &countries) {
        Ok(prefixes) => prefixes,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = start.elapsed();

    let list = countries.iter().map(CountryCode::as_str).collect::<Vec<_>>().join(",");
    println!("database:            {}", path.display());
    println!("countries:           {list}");
    println!("networks in database {}", prefixes.networks_total);
    println!("networks read:       {} (selected countries, before merging)", prefixes.networks_read);
    println!(
        "prefixes merged:     {} (IPv4 {}, IPv6 {})",
        prefixes.len(),
        prefixes.v4.len(),
        prefixes.v6.len()
    );
    let v4_addresses: u64 = prefixes.v4.iter().map(|net| 1u64 << (32 - net.prefix_len())).sum();
    println!("IPv4 addresses:      {v4_addresses}");
    println!("load time:           {:.1} ms", elapsed.as_secs_f64() * 1e3);
    match (rss_before, vm_kib("VmRSS"), vm_kib("VmHWM")) {
        (Some(before), Some(after), Some(peak)) => {
            println!("RSS:                 {before} KiB before, {after} KiB after, peak (VmHWM) {peak} KiB")
        }
        _ => println!("RSS:                 unknown (no /proc/self/status)"),
    }
    ExitCode::SUCCESS
}

/// A `Vm*` line of `/proc/self/status`, in KiB.
fn vm_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}
