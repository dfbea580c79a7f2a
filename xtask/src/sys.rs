//! Small system helpers: CPU pinning, network namespaces, machine facts, a raw
//! two-instruction TC program (the TC baseline the eBPF object does not ship), and
//! private pin directories.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sg_daemon::dataplane::Dataplane;

/// Fails unless running as root (BPF, bpffs, namespaces and nftables all need it).
pub fn require_root() -> Result<()> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load eBPF programs and build namespaces: run them as root");
    }
    Ok(())
}

/// Pins the calling thread to one CPU and raises its priority to nice -20 (so other
/// processes on a shared machine take little of that CPU) until dropped.
pub struct CpuPin {
    old: libc::cpu_set_t,
    old_nice: libc::c_int,
}

impl CpuPin {
    pub fn new(cpu: usize) -> Result<Self> {
        // SAFETY: cpu_set_t is plain data; the calls get valid pointers and sizes.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) != 0 {
                return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
            }
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("pinning to CPU {cpu}"));
            }
            // The nice value is per thread on Linux (who = 0: the calling thread).
            let old_nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(libc::PRIO_PROCESS, 0, -20);
            Ok(CpuPin { old, old_nice })
        }
    }
}

impl Drop for CpuPin {
    fn drop(&mut self) {
        // SAFETY: restores the mask and priority read in `new`.
        unsafe {
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.old);
            libc::setpriority(libc::PRIO_PROCESS, 0, self.old_nice);
        }
    }
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`ip netns add`) the calling thread has entered; on drop
/// the thread goes back to its original namespace and the namespace (with its veths)
/// is deleted.
pub struct NetnsGuard {
    pub name: String,
    original: fs::File,
}

impl NetnsGuard {
    pub fn create_and_enter(name: &str) -> Result<Self> {
        let original = fs::File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        run("ip", &["netns", "add", name])?;
        let guard = NetnsGuard { name: name.to_string(), original };
        let ns = fs::File::open(format!("/run/netns/{name}")).context("opening the new netns")?;
        // SAFETY: valid fd of a network namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        Ok(guard)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: fd of the namespace we came from.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// The interface index of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface {name} not found");
    }
    Ok(idx)
}

/// Creates a veth pair `a`/`b` (down) in the current namespace that carries no
/// traffic; returns both indices.
///
/// Used to keep XDP programs attached somewhere: BPF_PROG_TEST_RUN of an XDP program
/// that is not attached anywhere adds it to the kernel's XDP dispatcher and removes it
/// again, each with a `synchronize_rcu()` (10-25 ms on this VM) per call. A program
/// attached to a device stays in the dispatcher, and test runs of it cost nothing extra.
/// (The kernel here has no `dummy` driver; modules are disabled.)
pub fn parking_veth(a: &str, b: &str) -> Result<(u32, u32)> {
    run("ip", &["link", "add", a, "type", "veth", "peer", "name", b])?;
    Ok((ifindex(a)?, ifindex(b)?))
}

/// A private data-plane pin directory, removed (links, programs, maps) on drop.
pub struct PinDir {
    pub path: PathBuf,
}

/// Prefix of every pin directory and namespace the benchmarks create.
pub const PREFIX: &str = "sg-xtask-bench";

impl PinDir {
    pub fn new(tag: &str) -> Result<Self> {
        remove_stale()?;
        let path = PathBuf::from(format!("/sys/fs/bpf/{PREFIX}-{tag}-{}", std::process::id()));
        Dataplane::uninstall(&path)?;
        Ok(PinDir { path })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = Dataplane::uninstall(&self.path) {
            eprintln!("warning: removing {}: {e:#}", self.path.display());
        }
    }
}

/// Removes pin directories and namespaces of earlier benchmark runs whose process is gone
/// (an interrupted run leaves them behind).
fn remove_stale() -> Result<()> {
    let alive = |name: &str| {
        name.rsplit('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && !alive(&name) {
                eprintln!("removing stale {}", e.path().display());
                Dataplane::uninstall(&e.path()).ok();
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && !alive(&name) {
                eprintln!("removing stale netns {name}");
                run("ip", &["netns", "del", &name]).ok();
            }
        }
    }
    Ok(())
}

/// Facts about the machine for the report.
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub mem_gib: f64,
    pub date: String,
    pub loadavg: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let mem_kib: f64 = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:").and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0.0);
        let date = run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default().trim().to_string();
        Machine { cpu_model, cpus, kernel, mem_gib: mem_kib / 1024.0 / 1024.0, date, loadavg: loadavg() }
    }

    pub fn markdown(&self) -> String {
        let obj = sg_daemon::dataplane::EBPF_OBJECT;
        format!(
            "- Machine: {} ({} vCPU, {:.1} GiB), Linux {}; CPU vulnerabilities: {}\n- Date: {}; load average at start: {}\n\
             - eBPF object measured: {} bytes, FNV-1a {:016x}\n",
            self.cpu_model,
            self.cpus,
            self.mem_gib,
            self.kernel,
            mitigations(),
            self.date,
            self.loadavg,
            obj.len(),
            fnv1a(obj)
        )
    }
}

/// FNV-1a, 64 bits: a fingerprint of the measured eBPF object.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// --- Raw programs the eBPF object does not ship: an empty TC classifier, and a
// calibration program that calls a helper ten times. -------------------------------

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;

/// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
pub fn insn_mov_r0(imm: i32) -> u64 {
    0xb7 | (u64::from(imm as u32) << 32)
}
/// `call helper` (BPF_JMP | BPF_CALL).
pub fn insn_call(helper: i32) -> u64 {
    0x85 | (u64::from(helper as u32) << 32)
}
/// `exit`.
pub const INSN_EXIT: u64 = 0x95;
/// Helper ids timed by the calibration: a plain call, the clock sg reads per packet, and
/// the one the verifier inlines.
pub const HELPER_PRANDOM_U32: i32 = 7;
pub const HELPER_KTIME_GET_NS: i32 = 5;
pub const HELPER_JIFFIES64: i32 = 118;
pub const HELPER_KTIME_GET_COARSE_NS: i32 = 160;

/// Loads raw instructions as a program of `prog_type` and pins it at `pin` (so aya can
/// open it with `from_pin`).
pub fn load_raw(prog_type: u32, insns: &[u64], name: &str, pin: &Path) -> Result<()> {
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // prog_name at offset 48 (after log_level, log_size, log_buf, kern_version, prog_flags)
    let n = name.len().min(15);
    attr[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: bpf(2) with a zero-padded attribute block and valid pointers.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("BPF_PROG_LOAD ({name})"));
    }
    let fd = fd as libc::c_int;
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut pin_attr = [0u8; 32];
    pin_attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    pin_attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin_attr.as_ptr(), pin_attr.len() as u32) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our fd; the pin keeps the program.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err).with_context(|| format!("BPF_OBJ_PIN ({name})"));
    }
    Ok(())
}

/// The smallest TC classifier: `r0 = -1 (TC_ACT_UNSPEC); exit`.
pub fn load_empty_tc(pin: &Path) -> Result<()> {
    load_raw(BPF_PROG_TYPE_SCHED_CLS, &[insn_mov_r0(-1), INSN_EXIT], "bench_empty_tc", pin)
}

/// An XDP program that calls helper `helper` `calls` times, then passes.
pub fn load_helper_calls(helper: i32, calls: usize, pin: &Path) -> Result<()> {
    let mut insns = vec![insn_call(helper); calls];
    insns.push(insn_mov_r0(2));
    insns.push(INSN_EXIT);
    load_raw(BPF_PROG_TYPE_XDP, &insns, &format!("bench_h{helper}x{calls}"), pin)
}

/// Mitigations that make calls and returns in the kernel slow (they inflate the cost
/// of every helper and map call here).
pub fn mitigations() -> String {
    ["spec_rstack_overflow", "spectre_v2", "retbleed"]
        .iter()
        .filter_map(|v| {
            fs::read_to_string(format!("/sys/devices/system/cpu/vulnerabilities/{v}"))
                .ok()
                .map(|s| format!("{v}: {}", s.trim()))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
