//! Privileged test harness for sg: network-namespace fixtures and traffic probes.
//!
//! Integration tests (in `tests/tests/`) build a [`Topology`] — a "hypervisor host"
//! namespace plus one namespace per VM instance and per remote client, each joined to
//! the host by a veth whose host side is the instance's "tap" — then start servers and
//! probe reachability before and after attaching the data plane to a tap.
//!
//! Everything lives in namespaces created here (named `sgt…`), so tests never touch
//! the machine's own network and can run in parallel. Every command and probe has a
//! hard timeout, and every resource (namespaces, servers, child processes) is released
//! on drop, so a failing test cleans up after itself.
//!
//! ```no_run
//! use std::time::Duration;
//! use sg_tests::*;
//!
//! # fn main() -> anyhow::Result<()> {
//! let mut topo = Topology::new_unique()?;
//! let vm = topo.add_instance("vm1")?;
//! let client = topo.add_remote("client")?;
//! let _ssh = tcp_server(&vm, 22, false)?;
//! assert!(tcp_connect(&client, vm.ipv4().into(), 22, PROBE_TIMEOUT));
//! let src = client.add_addr("203.0.113.7/32")?;
//! assert!(tcp_connect_from(&client, src, vm.ipv4().into(), 22, Duration::from_secs(1)));
//! # Ok(())
//! # }
//! ```
//!
//! Requires root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2; see [`require_root!`].
#![warn(missing_docs)]

mod cmd;
pub mod daemon;
pub mod kernel;
mod netns;
mod sock;
mod topology;
mod traffic;

pub use cmd::{ChildGuard, DEFAULT_TIMEOUT, describe_command, run_command, run_command_checked};
pub use netns::Netns;
pub use topology::{Endpoint, EndpointKind, NS_PREFIX, Topology, cleanup_stale, unique_prefix};
pub use traffic::{
    ECHO_CONNECT_TIMEOUT, EchoConn, PROBE_TIMEOUT, TcpOutcome, TcpServer, UdpEchoServer, UdpOutcome, ping,
    ping_from, ping_probe, tcp_connect, tcp_connect_from, tcp_probe, tcp_server, udp_echo_server, udp_probe,
    udp_request, udp_request_from,
};

/// Whether we run with effective uid 0, which namespace and veth setup needs.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints `SKIPPED: <why> (<test name>)` straight to the process's stderr, bypassing
/// libtest's output capture (which would hide `eprintln!` of a passing test), so a
/// skipped privileged test is visible in every run.
#[doc(hidden)]
pub fn report_skip(why: &str) {
    use std::io::Write;
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("<unknown test>").to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why} ({test})");
}

/// Skips the current test, loudly, when not running as root.
///
/// Use as the first statement of a privileged test: `require_root!();` in a test
/// returning `()`, or `require_root!(Ok(()))` in one returning a `Result`. A skip
/// prints `SKIPPED: needs root` so it cannot pass unnoticed (CI runs as root).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!(())
    };
    ($ret:expr) => {
        if !$crate::is_root() {
            $crate::report_skip("needs root");
            return $ret;
        }
    };
}
