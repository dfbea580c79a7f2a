//! `sg-daemon`: the security-group host agent and its operator CLI.
//!
//! `sg-daemon run` is the long-running agent. Every other command runs in this process,
//! or, when an agent is listening on the control socket, is forwarded to it.

use std::process::ExitCode;

use clap::Parser;
use sg_daemon::cli::{Cli, Command, Out, execute};
use sg_daemon::{agent, netns};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // A running agent owns the data plane: forward the command to it.
    if !matches!(cli.command, Command::Run(_))
        && std::env::var_os("SG_NO_AGENT").is_none()
        && let Some(reply) = agent::forward(&cli.global.socket, std::env::args().skip(1).collect())
    {
        return match reply {
            Ok(r) => {
                print!("{}", r.stdout);
                eprint!("{}", r.stderr);
                ExitCode::from(u8::try_from(r.code).unwrap_or(1))
            }
            Err(e) => {
                eprintln!("error: talking to the agent on {}: {e:#}", cli.global.socket.display());
                ExitCode::FAILURE
            }
        };
    }
    if let Some(ns) = &cli.global.netns
        && let Err(e) = netns::enter(ns)
    {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    if let Command::Run(args) = cli.command {
        return match agent::run(cli.global, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut out = Out::default();
    let result = execute(&cli.global, cli.command, &mut out);
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
