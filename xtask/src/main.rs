//! Developer tasks for sg. Run as `cargo run --release -p xtask -- <task>`.
//!
//! - `bench classify`: cost per packet of the classifier under BPF_PROG_TEST_RUN
//!   against the number of rules (issue 5);
//! - `bench live`: packets per second through a veth pair, sg against an empty XDP
//!   program, an XDP drop and nftables.
//!
//! Both need root, bpffs and (for `live`) `ip`, `ethtool` and `nft`.

mod classify;
mod docs;
mod live;
mod stats;
mod sys;
mod workload;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "sg developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Benchmarks of the data plane.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Classification cost (ns/packet) against rule count, with BPF_PROG_TEST_RUN.
    Classify(classify::Opts),
    /// Packet rate through a veth pair fed by XDP live frames.
    Live(live::Opts),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bench(Bench::Classify(opts)) => {
            let write = opts.write_docs;
            let results = classify::run(opts)?;
            let md = results.markdown();
            println!("{md}");
            let raw = docs::write_raw("classify.json", &results.json())?;
            eprintln!("raw samples: {}", raw.display());
            if write {
                let p = docs::update_block("classify", "Classification cost vs rule count", &md)?;
                let svg = docs::write_doc_file("bench-classify.svg", &results.svg())?;
                eprintln!("wrote {} and {}", p.display(), svg.display());
            }
        }
        Task::Bench(Bench::Live(opts)) => {
            let write = opts.write_docs;
            let results = live::run(opts)?;
            if results.is_empty() {
                return Ok(());
            }
            let md = results.markdown();
            println!("{md}");
            let raw = docs::write_raw("live.json", &results.json())?;
            eprintln!("raw samples: {}", raw.display());
            if write {
                let p = docs::update_block("live", "Packet rate on a veth path", &md)?;
                eprintln!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}
