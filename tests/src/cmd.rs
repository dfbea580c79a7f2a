//! Running external commands with hard timeouts.
//!
//! Every command the harness runs goes through here so that (a) no test can hang on a
//! stuck child, and (b) every failure names the exact command line and its stderr.
//!
//! Output is captured into temporary files rather than pipes: a pipe nobody reads fills
//! up and blocks a chatty child (think `tcpdump`), and a pipe inherited by a grandchild
//! keeps a reader blocked after the child itself has exited. Files have neither problem.
//! Each child is put in its own process group so that a timeout or a drop kills
//! whatever it forked as well.

use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Timeout for commands that have no better bound (setup commands, `exec`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`ChildGuard::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Renders a command line for error messages, quoting arguments that need it so the
/// text can be pasted into a shell to reproduce a failure.
pub fn describe_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(quote).collect::<Vec<_>>().join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain { s.into_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// A pair of temporary files receiving a child's stdout and stderr; removed on drop.
struct Capture {
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Capture {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("sg-tests-{}-{n}", std::process::id()));
        Capture { stdout: base.with_extension("out"), stderr: base.with_extension("err") }
    }

    /// Points the command's stdio at the capture files (stdin is /dev/null: a test
    /// helper must never wait for a terminal).
    fn attach(&self, cmd: &mut Command) -> Result<()> {
        let out = File::create(&self.stdout)
            .with_context(|| format!("creating capture file {}", self.stdout.display()))?;
        let err = File::create(&self.stderr)
            .with_context(|| format!("creating capture file {}", self.stderr.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        Ok(())
    }

    fn stdout(&self) -> Vec<u8> {
        std::fs::read(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> Vec<u8> {
        std::fs::read(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

fn spawn_captured(cmd: &mut Command, cap: &Capture) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    cap.attach(cmd)?;
    // Own process group: lets us kill the whole tree on timeout or drop.
    cmd.process_group(0);
    cmd.spawn().with_context(|| format!("spawning `{}`", describe_command(cmd)))
}

/// Sends `sig` to the child's whole process group (it leads its own group).
fn signal_group(child: &Child, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses
    // the process group we created for this child, so nothing else is signalled.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Polls `child` until it exits or `deadline` passes; `Ok(None)` means still running.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end().to_string()
}

/// Runs `cmd` to completion, killing it (and its process group) after `timeout`.
///
/// Returns the output whatever the exit status; fails only if the command cannot be
/// started or times out. Use [`run_command_checked`] when a non-zero exit is an error.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let cap = Capture::new();
    let mut child = spawn_captured(&mut cmd, &cap)?;
    let status = match wait_until(&mut child, Instant::now() + timeout)? {
        Some(status) => status,
        None => {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
            bail!(
                "`{}` timed out after {timeout:?}\nstdout: {}\nstderr: {}",
                describe_command(&cmd),
                lossy(&cap.stdout()),
                lossy(&cap.stderr())
            );
        }
    };
    Ok(Output { status, stdout: cap.stdout(), stderr: cap.stderr() })
}

/// Runs `cmd` like [`run_command`] and fails unless it exits successfully; returns
/// its stdout. The error names the command line, its exit status and its stderr.
pub fn run_command_checked(cmd: Command, timeout: Duration) -> Result<String> {
    let desc = describe_command(&cmd);
    let out = run_command(cmd, timeout)?;
    if !out.status.success() {
        bail!("`{desc}` failed ({}): {}", out.status, lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A background process that is killed (with its whole process group) when dropped,
/// so a failing test cannot leak servers, captures or daemons.
///
/// Its stdout and stderr go to temporary files, readable at any time with
/// [`ChildGuard::stdout`] / [`ChildGuard::stderr`] and returned by [`ChildGuard::stop`].
pub struct ChildGuard {
    child: Option<Child>,
    desc: String,
    cap: Capture,
}

impl ChildGuard {
    /// Starts `cmd` in the background (stdin from /dev/null, output captured).
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        let cap = Capture::new();
        let child = spawn_captured(&mut cmd, &cap)?;
        Ok(ChildGuard { child: Some(child), desc: describe_command(&cmd), cap })
    }

    /// The child's pid (also its process-group id).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> &str {
        &self.desc
    }

    /// `Some(status)` if the child has already exited — useful to detect a daemon that
    /// died during start-up instead of waiting for a probe to time out.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().with_context(|| format!("polling `{}`", self.desc)),
            None => bail!("`{}` was already stopped", self.desc),
        }
    }

    /// Fails, including the child's stderr, if it has exited. Call after starting a
    /// long-running process to turn an immediate crash into a readable error.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!("`{}` exited early ({status}): {}", self.desc, self.stderr());
        }
        Ok(())
    }

    /// Everything the child has written to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.cap.stdout()).into_owned()
    }

    /// Everything the child has written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.cap.stderr()).into_owned()
    }

    /// Stops the child gracefully — SIGTERM, then SIGKILL after a grace period — and
    /// returns its output. SIGTERM first lets e.g. tcpdump flush its capture file.
    pub fn stop(mut self) -> Result<Output> {
        let mut child = self.child.take().context("child already stopped")?;
        let status = match child.try_wait().context("polling child")? {
            Some(status) => status,
            None => {
                signal_group(&child, libc::SIGTERM);
                match wait_until(&mut child, Instant::now() + STOP_GRACE)? {
                    Some(status) => status,
                    None => {
                        signal_group(&child, libc::SIGKILL);
                        child.wait().with_context(|| format!("reaping `{}`", self.desc))?
                    }
                }
            }
        };
        Ok(Output { status, stdout: self.cap.stdout(), stderr: self.cap.stderr() })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Only signal a child we have not reaped: once reaped its pid may be reused.
            if matches!(child.try_wait(), Ok(None)) {
                signal_group(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard").field("pid", &self.id()).field("command", &self.desc).finish()
    }
}
