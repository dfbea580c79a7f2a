//! A handle on a named network namespace (`/run/netns/NAME`).
//!
//! Two ways of doing things inside a namespace are offered:
//! - external commands via `ip netns exec` ([`Netns::exec`], [`Netns::spawn`]), for
//!   tools such as tcpdump or the daemon under test;
//! - in-process closures via [`Netns::run`], which moves one fresh thread into the
//!   namespace with setns(2). The traffic probes use this: sockets keep the namespace
//!   they were created in, so a socket made on that thread can be used from anywhere
//!   afterwards, and probes need neither ping, nc nor socat to be installed.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::cmd::{ChildGuard, DEFAULT_TIMEOUT, run_command, run_command_checked};

/// Where iproute2 keeps named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// A named network namespace. Cheap to clone; it does not own the namespace (the
/// [`crate::Topology`] that created it deletes it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl AsRef<Netns> for Netns {
    fn as_ref(&self) -> &Netns {
        self
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Netns {
    /// A handle on the namespace called `name`, which need not exist (yet).
    pub fn named(name: impl Into<String>) -> Self {
        Netns { name: name.into() }
    }

    /// The namespace name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Whether the namespace currently exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// A `Command` running `args` in this namespace via `ip netns exec`.
    ///
    /// Note `ip netns exec` also remounts /sys for the namespace, which hides e.g. a
    /// bpffs mounted at /sys/fs/bpf; use [`Netns::command_keep_mounts`] for programs
    /// that need the host's mounts.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// A `Command` running `args` in this namespace via `nsenter --net`, which only
    /// switches the network namespace and keeps every mount (bpffs pins included).
    /// /sys/class/net then still shows the root namespace's devices; netlink and
    /// ioctls see this namespace.
    pub fn command_keep_mounts(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").args(args);
        cmd
    }

    /// Runs `args` in the namespace, failing on a non-zero exit or after
    /// [`DEFAULT_TIMEOUT`]; returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run_command_checked(self.command(args), DEFAULT_TIMEOUT)
    }

    /// Runs `args` in the namespace and returns its output whatever the exit status;
    /// fails only if it cannot start or runs longer than `timeout`.
    pub fn exec_output(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        run_command(self.command(args), timeout)
    }

    /// Starts `args` in the background in this namespace; killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Result<ChildGuard> {
        ChildGuard::spawn(self.command(args))
    }

    /// Runs `ip -n NAME args…` (checked, with timeout); returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_command_checked(cmd, DEFAULT_TIMEOUT)
    }

    /// Sets per-namespace sysctls, e.g. `&[("net.ipv4.ip_forward", "1")]`.
    ///
    /// Written in-process from a thread inside the namespace (/proc/sys/net follows
    /// the writing thread's namespace), so the `sysctl` tool is not needed. Only
    /// `net.*` keys are accepted: anything else is machine-global and a test must not
    /// change it. Keys use dots as separators, so names containing dots (VLAN
    /// devices) cannot be addressed.
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<()> {
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|&(key, value)| Ok((sysctl_path(key)?, value.to_string())))
            .collect::<Result<_>>()?;
        self.run(move || -> Result<()> {
            for (path, value) in settings {
                std::fs::write(&path, &value).with_context(|| format!("writing {value:?} to {path}"))?;
            }
            Ok(())
        })?
        .with_context(|| format!("setting sysctls in namespace {self}"))
    }

    /// Reads a per-namespace (`net.*`) sysctl, trimmed.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        self.run(move || std::fs::read_to_string(&path).with_context(|| format!("reading {path}")))?
            .map(|value| value.trim().to_string())
            .with_context(|| format!("in namespace {self}"))
    }

    /// The ifindex of device `ifname` in this namespace (e.g. to attach a program).
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", ifname])?;
        out.split(':')
            .next()
            .and_then(|idx| idx.trim().parse().ok())
            .with_context(|| format!("parsing ifindex of {ifname} in {self} from {out:?}"))
    }

    /// Runs `f` on a new thread that has joined this namespace, waiting at most
    /// [`DEFAULT_TIMEOUT`]. See [`Netns::run_with_timeout`].
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.run_with_timeout(DEFAULT_TIMEOUT, f)
    }

    /// Runs `f` on a new thread that has joined this namespace (setns(2) only changes
    /// the calling thread, so the test thread itself never moves). Anything `f` opens —
    /// sockets in particular — stays in this namespace when handed back.
    ///
    /// Gives up after `timeout` so a test can never hang here; a closure still running
    /// then is left to finish on its own, so `f` should bound its own blocking calls.
    /// A panic in `f` is returned as an error.
    pub fn run_with_timeout<T, F>(&self, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.path();
        let ns_file = std::fs::File::open(&path)
            .with_context(|| format!("opening namespace {} (does it exist?)", path.display()))?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || -> Result<()> {
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on a valid, open namespace fd; it only changes the
                // network namespace of this (fresh, private) thread.
                let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
                }
                drop(ns_file);
                let _ = tx.send(f());
                Ok(())
            })
            .context("spawning namespace thread")?;
        match rx.recv_timeout(timeout) {
            Ok(value) => {
                let _ = handle.join();
                Ok(value)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("closure in namespace {} still running after {timeout:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
                Ok(Ok(())) => bail!("closure in namespace {} returned nothing", self.name),
                Ok(Err(e)) => Err(e.context(format!("entering namespace {}", self.name))),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("non-string panic payload");
                    Err(anyhow!("closure in namespace {} panicked: {msg}", self.name))
                }
            },
        }
    }
}

/// Maps a `net.*` sysctl key to its /proc/sys path, refusing machine-global keys.
fn sysctl_path(key: &str) -> Result<String> {
    ensure!(
        key.starts_with("net.") && key.split('.').all(|part| !part.is_empty() && !part.contains('/')),
        "refusing sysctl {key:?}: only per-namespace net.* keys may be set by tests"
    );
    Ok(format!("/proc/sys/{}", key.replace('.', "/")))
}
