//! Fixture for tests of the `sg-daemon` binary: a private pin directory and state
//! directory per fixture, so tests run in parallel and never touch the machine's own
//! `/sys/fs/bpf/sg` or `/var/lib/sg`.
//!
//! ```no_run
//! use sg_tests::Topology;
//! use sg_tests::daemon::SgDaemon;
//!
//! # fn main() -> anyhow::Result<()> {
//! let mut topo = Topology::new_unique()?;
//! let vm = topo.add_instance("vm1")?;
//! let sg = SgDaemon::for_topology(&topo)?;
//! sg.apply_yaml(&format!(
//!     "instances:\n  - {{id: vm1, interface: {}, os: linux}}\n",
//!     vm.tap()
//! ));
//! let rules = sg.ls_rules("vm1");
//! assert_eq!(rules.len(), 5);
//! # Ok(())
//! # }
//! ```
//!
//! The daemon is always run from the root namespace with `SG_NETNS` naming the
//! topology's host namespace: it enters that namespace itself, keeping the root
//! mount namespace (and so the bpffs pins) in view.
//!
//! The binary is `$SG_DAEMON_BIN` if set, else `sg-daemon` next to the running test's
//! profile directory (normally `<workspace>/target/debug/sg-daemon`), built once per
//! test process with `cargo build -p sg-daemon` when it is missing or older than the
//! sources it is built from.
//!
//! On drop (also when a test panics) the fixture runs `sg-daemon uninstall` and
//! removes its directories.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd::{describe_command, run_command};
use crate::netns::Netns;
use crate::topology::Topology;

/// Longest a single daemon command may take (operator commands wait for each other on
/// the state lock, so this covers a queue of them).
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

/// How long building the daemon (eBPF object included) may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// Prefix of every pin directory a fixture creates under `/sys/fs/bpf`.
pub const PIN_PREFIX: &str = "sgt-";

/// Writes a line straight to the process's stderr, bypassing libtest's capture, so
/// warnings about the binary are seen even when tests pass.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "sg-tests: {msg}");
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo profile directory the running test was built into (`target/debug`), from
/// the test executable's path (`target/debug/deps/NAME-HASH`); honours a custom target
/// directory.
fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| workspace_root().join("target").join("debug"))
}

/// The newest modification time of any file under `paths` (recursively).
fn newest_mtime(paths: &[PathBuf]) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(mtime) = meta.modified() {
            newest = newest.max(Some(mtime));
        }
    }
    newest
}

/// Whether `bin` is older than a source file it is built from.
fn is_stale(bin: &Path) -> bool {
    let root = workspace_root();
    let sources = [
        root.join("sg-daemon/src"),
        root.join("sg-daemon/build.rs"),
        root.join("sg-daemon/Cargo.toml"),
        root.join("sg-common/src"),
        root.join("sg-ebpf/src"),
    ];
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
    matches!((built, newest_mtime(&sources)), (Some(built), Some(src)) if src > built)
}

fn cargo_build(profile: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["build", "-p", "sg-daemon"]);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target_dir) = profile.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let desc = describe_command(&cmd);
    let out = run_command(cmd, BUILD_TIMEOUT)?;
    if !out.status.success() {
        bail!("`{desc}` failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn locate_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SG_DAEMON_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("SG_DAEMON_BIN={} does not exist", bin.display());
        }
        return Ok(bin);
    }
    let profile = profile_dir();
    let bin = profile.join("sg-daemon");
    if !bin.is_file() {
        note(&format!("{} is missing: running `cargo build -p sg-daemon`", bin.display()));
        cargo_build(&profile).context("building sg-daemon for the tests")?;
        if !bin.is_file() {
            bail!("`cargo build -p sg-daemon` succeeded but {} is still missing", bin.display());
        }
    } else if is_stale(&bin) {
        note(&format!("{} is older than its sources: running `cargo build -p sg-daemon`", bin.display()));
        if let Err(e) = cargo_build(&profile) {
            note(&format!("rebuilding failed, testing the existing (stale) binary: {e:#}"));
        }
    }
    Ok(bin)
}

/// The `sg-daemon` binary under test (located, and built if needed, once per process).
pub fn daemon_binary() -> Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_binary().map_err(|e| format!("{e:#}"))).as_deref().map_err(|e| anyhow!("{e}"))
}

/// Whether process `pid` is alive.
fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Once per process, removes the pin directories of fixtures whose test process died
/// without cleaning up (`/sys/fs/bpf/sgt-<pid>-<n>` with a dead pid).
fn sweep_stale_pins() {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PIN_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !pid_alive(pid) {
                match sg_daemon::dataplane::Dataplane::uninstall(&entry.path()) {
                    Ok(()) => note(&format!("removed stale pin directory {}", entry.path().display())),
                    Err(e) => note(&format!("removing stale {}: {e:#}", entry.path().display())),
                }
            }
        }
    });
}

/// What an operator can observe without traffic: the stored state file, the
/// listings, and the data plane's pinned links. Two equal snapshots mean a command
/// changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `state.yaml`, byte for byte (`None` if it does not exist).
    pub state_file: Option<Vec<u8>>,
    /// `ls -o json`.
    pub instances: String,
    /// `ls -s ID -o json` of every listed instance, without the traffic counters
    /// (`packets`, `bytes`): the instances' own background traffic (IPv6 neighbour
    /// and multicast chatter) moves them whatever the command did.
    pub rules: BTreeMap<String, String>,
    /// Names of the pinned links (one per attached hook and interface).
    pub links: Vec<String>,
}

/// A private `sg-daemon` installation: pins under `/sys/fs/bpf/sgt-<pid>-<n>`, state
/// under a fresh temporary directory, operating on the interfaces of one namespace.
#[derive(Debug)]
pub struct SgDaemon {
    bin: PathBuf,
    bpffs: PathBuf,
    root: PathBuf,
    state_dir: PathBuf,
    netns: Option<String>,
}

impl SgDaemon {
    /// A fixture managing the interfaces of namespace `host` (`None`: the namespace
    /// the test runs in).
    pub fn new(host: Option<&Netns>) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let bin = daemon_binary()?.to_path_buf();
        sweep_stale_pins();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{PIN_PREFIX}{pid}-{n}"));
        // A leftover of a dead process that had our pid.
        sg_daemon::dataplane::Dataplane::uninstall(&bpffs)
            .with_context(|| format!("removing leftover {}", bpffs.display()))?;
        let root = std::env::temp_dir().join(format!("sg-tests-daemon-{pid}-{n}"));
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing leftover {}", root.display()))?;
        }
        let state_dir = root.join("state");
        std::fs::create_dir_all(root.join("files"))
            .with_context(|| format!("creating {}", root.display()))?;
        Ok(SgDaemon { bin, bpffs, root, state_dir, netns: host.map(|ns| ns.name().to_string()) })
    }

    /// A fixture managing the taps of `topo` (its host namespace).
    pub fn for_topology(topo: &Topology) -> Result<Self> {
        Self::new(Some(topo.host()))
    }

    /// The binary under test.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// The private bpffs pin directory (`SG_BPFFS`).
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The private state directory (`SG_STATE_DIR`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The stored desired state, `<state-dir>/state.yaml`.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.yaml")
    }

    /// A `Command` running the daemon with `args` and this fixture's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).env("SG_BPFFS", &self.bpffs).env("SG_STATE_DIR", &self.state_dir);
        // A private socket path nobody listens on: commands never reach an agent that
        // happens to run on this machine (tests that want an agent set their own).
        cmd.env("SG_SOCKET", self.state_dir.join("no-agent.sock")).env_remove("SG_NO_AGENT");
        match &self.netns {
            Some(ns) => cmd.env("SG_NETNS", ns),
            None => cmd.env_remove("SG_NETNS"),
        };
        cmd
    }

    /// Runs the daemon with `args` (at most [`DAEMON_TIMEOUT`]) and returns its output
    /// whatever the exit status. Panics only if it cannot be run or times out.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        let cmd = self.command(args);
        let desc = describe_command(&cmd);
        match run_command(cmd, DAEMON_TIMEOUT) {
            Ok(out) => out,
            Err(e) => panic!("running `{desc}`: {e:#}"),
        }
    }

    /// Runs the daemon and asserts it succeeded; returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`sg-daemon {}` failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the daemon and asserts it failed the documented way: exit code 1 and a
    /// stderr starting with `error: `. Returns the stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "`sg-daemon {}` should exit 1\nstdout: {}\nstderr: {stderr}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
        );
        assert!(
            stderr.lines().any(|l| l.starts_with("error: ")),
            "`sg-daemon {}`: no `error: ` line on stderr: {stderr}",
            args.join(" ")
        );
        stderr
    }

    /// Asserts that `args` is refused (exit 1, `error: ` on stderr), that the message
    /// contains every string of `expect`, and that nothing observable changed (see
    /// [`Snapshot`]). Returns the stderr.
    #[track_caller]
    pub fn refuses(&self, args: &[&str], expect: &[&str]) -> String {
        let before = self.snapshot();
        let stderr = self.fails(args);
        for want in expect {
            assert!(stderr.contains(want), "`sg-daemon {}`: expected {want:?} in: {stderr}", args.join(" "));
        }
        let after = self.snapshot();
        assert_eq!(before, after, "`sg-daemon {}` was refused but changed something", args.join(" "));
        stderr
    }

    /// Writes `contents` to a new file `name` in the fixture's scratch directory and
    /// returns its path.
    #[track_caller]
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.root.join("files").join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// `apply -f` of `yaml` (written to a scratch file); asserts success and returns
    /// the printed plan.
    #[track_caller]
    pub fn apply_yaml(&self, yaml: &str) -> String {
        let path = self.write_file("desired.yaml", yaml);
        self.ok(&["apply", "-f", &path.to_string_lossy()])
    }

    /// `apply -f` of `yaml`, whatever the outcome.
    #[track_caller]
    pub fn try_apply_yaml(&self, yaml: &str) -> Output {
        let path = self.write_file("desired.yaml", yaml);
        self.run(&["apply", "-f", &path.to_string_lossy()])
    }

    /// `ls -o json`, parsed: one object per instance (`id`, `interface`, `os`, `rules`).
    #[track_caller]
    pub fn ls_instances(&self) -> Vec<serde_json::Value> {
        parse_json_array(&self.ok(&["ls", "-o", "json"]))
    }

    /// `ls -s ID -o json`, parsed: one object per rule (`id`, `direction`, `ethertype`,
    /// `port_min`, `port_max`, `protocol`, `cidr`).
    #[track_caller]
    pub fn ls_rules(&self, instance: &str) -> Vec<serde_json::Value> {
        parse_json_array(&self.ok(&["ls", "-s", instance, "-o", "json"]))
    }

    /// The rule UUIDs of `instance`, in listing order.
    #[track_caller]
    pub fn rule_ids(&self, instance: &str) -> Vec<String> {
        self.ls_rules(instance)
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_else(|| panic!("rule without id: {r}")).to_string())
            .collect()
    }

    /// `stats -o json`: packets per verdict reason.
    #[track_caller]
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let text = self.ok(&["stats", "-o", "json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`stats -o json` printed no map ({e}): {text}"))
    }

    /// The stored state file's bytes, `None` if there is none.
    pub fn state_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(self.state_file()).ok()
    }

    /// Names of the pinned links (`xdp-IFINDEX`, `tc-IFINDEX`), sorted.
    pub fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.bpffs.join("links"))
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Everything observable without traffic; see [`Snapshot`].
    #[track_caller]
    pub fn snapshot(&self) -> Snapshot {
        let instances = self.ok(&["ls", "-o", "json"]);
        let rules = parse_json_array(&instances)
            .iter()
            .filter_map(|i| i["id"].as_str())
            .map(|id| {
                let mut rules = parse_json_array(&self.ok(&["ls", "-s", id, "-o", "json"]));
                for rule in rules.iter_mut().filter_map(|r| r.as_object_mut()) {
                    rule.remove("packets");
                    rule.remove("bytes");
                }
                (id.to_string(), serde_json::Value::Array(rules).to_string())
            })
            .collect();
        Snapshot { state_file: self.state_bytes(), instances, rules, links: self.links() }
    }
}

#[track_caller]
fn parse_json_array(text: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("expected a JSON array ({e}): {text}"))
}

impl Drop for SgDaemon {
    fn drop(&mut self) {
        // Without SG_NETNS: uninstalling needs no interface, and the topology's
        // namespaces may be gone already.
        let mut cmd = self.command(&["uninstall"]);
        cmd.env_remove("SG_NETNS");
        match run_command(cmd, DAEMON_TIMEOUT) {
            Ok(out) if out.status.success() => {}
            Ok(out) => note(&format!(
                "`sg-daemon uninstall` of {} failed: {}",
                self.bpffs.display(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            )),
            Err(e) => note(&format!("`sg-daemon uninstall` of {}: {e:#}", self.bpffs.display())),
        }
        // Whatever the binary left (or could not do: e.g. a namespace already gone).
        if let Err(e) = sg_daemon::dataplane::Dataplane::uninstall(&self.bpffs) {
            note(&format!("removing {}: {e:#}", self.bpffs.display()));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            note(&format!("removing {}: {e}", self.root.display()));
        }
    }
}
