//! Adapter: the pinned eBPF objects under the bpffs directory (default `/sys/fs/bpf/sg`).
//!
//! Layout (everything pinned, so enforcement goes on while no daemon runs):
//! - `<dir>/IFACE_POLICY`, `PORT_CLASS`, `CIDR_ALLOW`, `CT`, ...: maps, by name (see README);
//! - `<dir>/prog_egress`, `<dir>/prog_ingress`: the XDP and TC programs;
//! - `<dir>/links/xdp-<ifindex>`, `<dir>/links/tc-<ifindex>`: one link per hook.
//!
//! Opening adopts whatever is pinned and creates what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::Ebpf;
use aya::EbpfLoader;
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use sg_common::abi::{
    self, CidrExactKey, CidrKey, CidrMatch, CtEntry, CtKey, CtTimeouts, IfacePolicy, MAP_CIDR_ALLOW,
    MAP_CIDR_ALLOW_EXACT, MAP_CT, MAP_CT_CONFIG, MAP_CT_NEW, MAP_GEO_BLOCK, MAP_GEO_CONFIG, MAP_IFACE_POLICY,
    MAP_IFACE_STATS, MAP_LAYOUT_VERSION, MAP_PORT_CLASS, MAP_PORT_CLASS_EXACT, PortClass, PortClassKey,
    Reason,
};
use sg_common::abi::{
    GEO_KEY_FIXED_BITS, GeoConfig, GeoKey, GeoValue, IfaceCounters, MAP_RULE_SLOTS, MAP_RULE_STATS,
    RuleCounters, RuleStatsKey,
};
use tracing::{debug, info};

use crate::compile::CompiledPolicy;

/// The eBPF object built by `build.rs` (also holds the `sg_bench_*` baseline programs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf"));

/// Map capacities, configurable; exceeding one is an error at apply time.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub interfaces: u32,
    /// Each of the two port maps (`PORT_CLASS`, `PORT_CLASS_EXACT`).
    pub port_class_entries: u32,
    /// Each of the two CIDR maps (`CIDR_ALLOW`, `CIDR_ALLOW_EXACT`).
    pub cidr_entries: u32,
    /// Networks of geo-blocked countries (two sets coexist during a swap).
    pub geo_entries: u32,
    /// Per-rule counters (all instances).
    pub rule_stats: u32,
    /// Confirmed (established / replied) flows.
    pub ct_entries: u32,
    /// Unconfirmed flows (handshakes, unreplied).
    pub ct_new_entries: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            interfaces: 4096,
            port_class_entries: 262_144,
            cidr_entries: 262_144,
            ct_entries: 262_144,
            ct_new_entries: 65_536,
            geo_entries: 1_000_000,
            rule_stats: 262_144,
        }
    }
}

/// Contents of the rule maps: entries per map and the policy ids they belong to.
#[derive(Clone, Debug, Default)]
pub struct TrieUsage {
    /// `PORT_CLASS` (trie).
    pub port_entries: usize,
    /// `PORT_CLASS_EXACT` (hash).
    pub port_exact_entries: usize,
    /// `CIDR_ALLOW` (trie).
    pub cidr_entries: usize,
    /// `CIDR_ALLOW_EXACT` (hash).
    pub cidr_exact_entries: usize,
    pub policy_ids: BTreeSet<u32>,
}

pub struct Dataplane {
    dir: PathBuf,
    ebpf: Ebpf,
    pub capacity: Capacity,
    /// `IFACE_POLICY_BY_INDEX`, mapped into this process.
    words: PolicyWords,
}

/// The shared mapping of `IFACE_POLICY_BY_INDEX`: one word per ifindex, written with
/// atomic stores (a map update syscall copies values with `memcpy`, which may store a
/// word in pieces that a packet could see half-written).
struct PolicyWords {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics.
unsafe impl Send for PolicyWords {}
// SAFETY: as above.
unsafe impl Sync for PolicyWords {}

impl PolicyWords {
    fn map(map: &MapData) -> Result<Self> {
        use std::os::fd::{AsFd, AsRawFd};
        let len = abi::IFACE_INDEX_SLOTS as usize;
        let bytes = len * 8;
        // SAFETY: mmap of a BPF_F_MMAPABLE array's fd, the size of its values.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping IFACE_POLICY_BY_INDEX");
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(PolicyWords { ptr, len })
    }

    fn load(&self, ifindex: u32) -> u64 {
        self.word(ifindex).load(std::sync::atomic::Ordering::Acquire)
    }

    fn store(&self, ifindex: u32, word: u64) {
        self.word(ifindex).store(word, std::sync::atomic::Ordering::Release);
    }

    fn word(&self, ifindex: u32) -> &std::sync::atomic::AtomicU64 {
        assert!((ifindex as usize) < self.len, "ifindex {ifindex} beyond the mapped array");
        // SAFETY: in bounds (checked); the mapping lives as long as `self`.
        unsafe { &*self.ptr.as_ptr().add(ifindex as usize) }
    }
}

impl Drop for PolicyWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len * 8) };
    }
}

/// Mounts bpffs on `/sys/fs/bpf` when it is missing (it is not mounted at boot on
/// every distribution).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        fs::create_dir_all(root).ok();
        let src = CString::new("bpf")?;
        let target = CString::new("/sys/fs/bpf")?;
        // SAFETY: plain mount(2) with valid C strings.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
        }
        info!("mounted bpffs on /sys/fs/bpf");
    }
    Ok(())
}

/// Adds the policy ids of a map's keys to `ids`; returns how many keys there were.
fn policy_ids(
    keys: impl Iterator<Item = Result<u32, aya::maps::MapError>>,
    ids: &mut BTreeSet<u32>,
) -> Result<usize> {
    let mut n = 0;
    for id in keys {
        ids.insert(id?);
        n += 1;
    }
    Ok(n)
}

/// Inserts LPM entries into the trie `name` (of `capacity` entries, for the error).
fn write_lpm<K: aya::Pod, V: aya::Pod>(
    map: Option<&mut aya::maps::Map>,
    name: &str,
    capacity: u32,
    entries: &[crate::compile::LpmEntry<K, V>],
) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, K, V> =
        LpmTrie::try_from(map.with_context(|| format!("{name} map"))?)?;
    for e in entries {
        trie.insert(&Key::new(e.prefix_len, e.key), &e.value, 0)
            .map_err(|err| anyhow!("writing {name} (capacity {capacity}): {err}"))?;
    }
    Ok(())
}

/// Inserts entries into the hash map `name` (of `capacity` entries, for the error).
fn write_hash<K: aya::Pod, V: aya::Pod>(
    map: Option<&mut aya::maps::Map>,
    name: &str,
    capacity: u32,
    entries: &[(K, V)],
) -> Result<()> {
    let mut hash: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map.with_context(|| format!("{name} map"))?)?;
    for (k, v) in entries {
        hash.insert(k, v, 0).map_err(|err| anyhow!("writing {name} (capacity {capacity}): {err}"))?;
    }
    Ok(())
}

/// Deletes the prefixes of an LPM trie whose key data `keep` rejects; returns how many.
fn remove_dead_prefixes<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::Map,
    keep: impl Fn(&K) -> bool,
) -> Result<usize> {
    let mut trie: LpmTrie<&mut MapData, K, V> = LpmTrie::try_from(map)?;
    let dead: Vec<Key<K>> = trie.keys().filter_map(|k| k.ok()).filter(|k| !keep(&k.data())).collect();
    for k in &dead {
        trie.remove(k)?;
    }
    Ok(dead.len())
}

/// Deletes the keys of a hash map that `keep` rejects; returns how many.
fn remove_dead_keys<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::Map,
    keep: impl Fn(&K) -> bool,
) -> Result<usize> {
    let mut map: BpfHashMap<&mut MapData, K, V> = BpfHashMap::try_from(map)?;
    let dead: Vec<K> = map.keys().filter_map(|k| k.ok()).filter(|k| !keep(k)).collect();
    for k in &dead {
        map.remove(k)?;
    }
    Ok(dead.len())
}

/// `SG_META` slots: the pinned programs' object hash, the maps' layout version.
const META_OBJECT_HASH: u32 = 0;
const META_LAYOUT: u32 = 1;

/// Refuses pins written with another map layout: the programs would misread them.
fn check_layout(dir: &Path) -> Result<()> {
    let pin = dir.join("SG_META");
    if !pin.exists() {
        return Ok(()); // a fresh directory
    }
    let meta: Array<MapData, u64> = Array::try_from(aya::maps::Map::Array(MapData::from_pin(&pin)?))?;
    let (hash, layout) = (meta.get(&META_OBJECT_HASH, 0)?, meta.get(&META_LAYOUT, 0)?);
    // Layout 1 predates the version slot (it reads as 0 next to a program hash).
    let layout = if layout == 0 && hash != 0 { 1 } else { layout };
    if layout != 0 && layout != MAP_LAYOUT_VERSION {
        bail!(
            "the data plane pinned under {} uses map layout {layout}, this binary layout {MAP_LAYOUT_VERSION}: \
             run `sg-daemon uninstall` (tracked connections are lost) and apply the state again \
             (`sg-daemon apply -f /var/lib/sg/state.yaml`)",
            dir.display()
        );
    }
    Ok(())
}

/// FNV-1a of the embedded eBPF object: identifies the programs this binary carries.
fn object_hash() -> u64 {
    EBPF_OBJECT
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Whether a map error means "no such key" (aya reports ENOENT from delete as a
/// syscall error).
pub fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

impl Dataplane {
    /// Opens (adopting pins) or creates the data plane under `dir`.
    pub fn open(dir: &Path, capacity: Capacity) -> Result<Self> {
        ensure_bpffs(dir)?;
        fs::create_dir_all(dir.join("links")).with_context(|| format!("creating {}", dir.display()))?;
        if !is_bpffs(dir) {
            bail!("{} is not on a bpffs mount; pins would not survive", dir.display());
        }
        // Pinned maps keep the size they were created with (the loader refuses to reuse
        // a pin of another size): their size is the truth, a different request only
        // takes effect after `uninstall`.
        check_layout(dir)?;
        let mut actual = capacity;
        for (name, field) in [
            (MAP_IFACE_POLICY, &mut actual.interfaces),
            (MAP_PORT_CLASS, &mut actual.port_class_entries),
            // The hash maps were created with their trie's size, and follow it.
            (MAP_CIDR_ALLOW, &mut actual.cidr_entries),
            (MAP_CT, &mut actual.ct_entries),
            (MAP_CT_NEW, &mut actual.ct_new_entries),
            (MAP_GEO_BLOCK, &mut actual.geo_entries),
            (MAP_RULE_STATS, &mut actual.rule_stats),
        ] {
            let pin = dir.join(name);
            if !pin.exists() {
                continue;
            }
            let max = MapData::from_pin(&pin)?.info()?.max_entries();
            if max != *field {
                tracing::warn!(
                    map = name,
                    pinned = max,
                    requested = *field,
                    "map keeps its pinned capacity; `sg-daemon uninstall` and apply to resize (tracked connections are lost)"
                );
                *field = max;
            }
        }
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .map_max_entries(MAP_IFACE_POLICY, actual.interfaces)
            .map_max_entries(MAP_PORT_CLASS, actual.port_class_entries)
            .map_max_entries(MAP_PORT_CLASS_EXACT, actual.port_class_entries)
            .map_max_entries(MAP_CIDR_ALLOW, actual.cidr_entries)
            .map_max_entries(MAP_CIDR_ALLOW_EXACT, actual.cidr_entries)
            .map_max_entries(MAP_CT, actual.ct_entries)
            .map_max_entries(MAP_CT_NEW, actual.ct_new_entries)
            .map_max_entries(MAP_GEO_BLOCK, actual.geo_entries)
            .map_max_entries(MAP_IFACE_STATS, actual.interfaces)
            .map_max_entries(MAP_RULE_STATS, actual.rule_stats)
            .map_max_entries(MAP_RULE_SLOTS, actual.rule_stats)
            .load(EBPF_OBJECT)
            .context("loading the sg eBPF object (maps pinned under the bpffs directory)")?;
        let words = PolicyWords::map(match ebpf.map(abi::MAP_IFACE_POLICY_BY_INDEX) {
            Some(aya::maps::Map::Array(data)) => data,
            _ => bail!("IFACE_POLICY_BY_INDEX missing from the object, or not an array"),
        })?;
        let mut dp = Dataplane { dir: dir.to_path_buf(), ebpf, capacity: actual, words };
        let mut meta: Array<&mut MapData, u64> =
            Array::try_from(dp.ebpf.map_mut("SG_META").context("SG_META map")?)?;
        meta.set(META_LAYOUT, &MAP_LAYOUT_VERSION, 0)?;
        // First use of this directory: load and pin the programs now.
        if !dp.prog_pin("prog_egress").exists() || !dp.prog_pin("prog_ingress").exists() {
            dp.ensure_programs()?;
        }
        Ok(dp)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn prog_pin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Loads and pins the programs unless pinned ones exist already. When the pinned
    /// programs differ from this binary's (an upgrade: the kernel's program tag is a
    /// hash of the instructions), the new ones replace them in every link with
    /// `bpf_link_update`, atomically per hook, keeping the pinned maps and so every
    /// tracked connection.
    pub fn ensure_programs(&mut self) -> Result<()> {
        let hash = object_hash();
        let meta: Array<&MapData, u64> = Array::try_from(self.ebpf.map("SG_META").context("SG_META map")?)?;
        let pinned_hash = meta.get(&META_OBJECT_HASH, 0)?;
        if pinned_hash == hash
            && self.prog_pin("prog_egress").exists()
            && self.prog_pin("prog_ingress").exists()
        {
            return Ok(()); // the pinned programs are this binary's
        }
        self.ensure_xdp()?;
        self.ensure_tc()?;
        let mut meta: Array<&mut MapData, u64> =
            Array::try_from(self.ebpf.map_mut("SG_META").context("SG_META map")?)?;
        meta.set(META_OBJECT_HASH, &hash, 0)?;
        Ok(())
    }

    fn ensure_xdp(&mut self) -> Result<()> {
        let pin = self.prog_pin("prog_egress");
        let pinned_tag = pin
            .exists()
            .then(|| Xdp::from_pin(&pin, aya_obj::programs::XdpAttachType::Interface))
            .transpose()?
            .map(|p| p.info().map(|i| i.tag()))
            .transpose()?;
        let links = self.link_pins("xdp")?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(abi::PROG_INSTANCE_EGRESS)
            .ok_or_else(|| anyhow!("program {} missing from object", abi::PROG_INSTANCE_EGRESS))?
            .try_into()?;
        prog.load().context("verifier rejected the XDP program")?;
        let new_tag = prog.info()?.tag();
        if pinned_tag == Some(new_tag) {
            return Ok(()); // same program: keep the pinned one (already in the links)
        }
        for link_path in &links {
            let link: FdLink = PinnedLink::from_pin(link_path)?.into();
            let link = aya::programs::xdp::XdpLink::try_from(link).context("pinned XDP link")?;
            prog.attach_to_link(link).with_context(|| format!("upgrading {}", link_path.display()))?;
        }
        if pin.exists() {
            fs::remove_file(&pin)?;
        }
        prog.pin(&pin).context("pinning the XDP program")?;
        info!(links = links.len(), upgraded = pinned_tag.is_some(), "XDP program in place");
        Ok(())
    }

    fn ensure_tc(&mut self) -> Result<()> {
        let pin = self.prog_pin("prog_ingress");
        let pinned_tag = pin
            .exists()
            .then(|| SchedClassifier::from_pin(&pin))
            .transpose()?
            .map(|p| p.info().map(|i| i.tag()))
            .transpose()?;
        let links = self.link_pins("tc")?;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(abi::PROG_INSTANCE_INGRESS)
            .ok_or_else(|| anyhow!("program {} missing from object", abi::PROG_INSTANCE_INGRESS))?
            .try_into()?;
        prog.load().context("verifier rejected the TC program")?;
        let new_tag = prog.info()?.tag();
        if pinned_tag == Some(new_tag) {
            return Ok(());
        }
        for link_path in &links {
            let link: FdLink = PinnedLink::from_pin(link_path)?.into();
            let link = aya::programs::tc::SchedClassifierLink::try_from(link).context("pinned TC link")?;
            prog.attach_to_link(link).with_context(|| format!("upgrading {}", link_path.display()))?;
        }
        if pin.exists() {
            fs::remove_file(&pin)?;
        }
        prog.pin(&pin).context("pinning the TC program")?;
        info!(links = links.len(), upgraded = pinned_tag.is_some(), "TC program in place");
        Ok(())
    }

    /// Pinned links of one hook (`xdp` or `tc`).
    fn link_pins(&self, hook: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.dir.join("links"))? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{hook}-"))) {
                out.push(path);
            }
        }
        Ok(out)
    }

    fn link_pin(&self, hook: &str, ifindex: u32) -> PathBuf {
        self.dir.join("links").join(format!("{hook}-{ifindex}"))
    }

    /// Attaches both programs to `ifindex` unless pinned links exist.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        let xdp_pin = self.link_pin("xdp", ifindex);
        if !xdp_pin.exists() {
            let mut prog =
                Xdp::from_pin(self.prog_pin("prog_egress"), aya_obj::programs::XdpAttachType::Interface)?;
            let id = prog
                .attach(ifindex, XdpMode::Default)
                .with_context(|| format!("attaching XDP to ifindex {ifindex}"))?;
            let link: FdLink = prog.take_link(id)?.try_into().context("XDP link is not a bpf_link")?;
            link.pin(&xdp_pin).context("pinning XDP link")?;
            debug!(ifindex, "attached XDP");
        }
        let tc_pin = self.link_pin("tc", ifindex);
        if !tc_pin.exists() {
            let mut prog = SchedClassifier::from_pin(self.prog_pin("prog_ingress"))?;
            let id = prog
                .attach(ifindex, TcAttachType::Egress)
                .with_context(|| format!("attaching TC to ifindex {ifindex}"))?;
            let link: FdLink = prog.take_link(id)?.try_into().context("TC link is not a bpf_link (tcx)")?;
            link.pin(&tc_pin).context("pinning TC link")?;
            debug!(ifindex, "attached TC (tcx egress)");
        }
        Ok(())
    }

    /// Detaches both programs from `ifindex` (removing the pins drops the links).
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        for hook in ["xdp", "tc"] {
            let pin = self.link_pin(hook, ifindex);
            if pin.exists() {
                let link =
                    PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
                drop(link.unpin()?);
            }
        }
        Ok(())
    }

    /// Interfaces with pinned links.
    pub fn attached_ifindexes(&self) -> Result<BTreeSet<u32>> {
        let mut out = BTreeSet::new();
        for entry in fs::read_dir(self.dir.join("links"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(idx) = name.split_once('-').and_then(|(_, i)| i.parse().ok()) {
                out.insert(idx);
            }
        }
        Ok(out)
    }

    fn iface_map(&mut self) -> Result<BpfHashMap<&mut MapData, u32, IfacePolicy>> {
        Ok(BpfHashMap::try_from(self.ebpf.map_mut(MAP_IFACE_POLICY).context("IFACE_POLICY map")?)?)
    }

    /// ifindex -> bound policy.
    pub fn bindings(&self) -> Result<BTreeMap<u32, IfacePolicy>> {
        let map: BpfHashMap<&MapData, u32, IfacePolicy> =
            BpfHashMap::try_from(self.ebpf.map(MAP_IFACE_POLICY).context("IFACE_POLICY map")?)?;
        Ok(map.iter().collect::<Result<_, _>>()?)
    }

    /// The binding the kernel reads for `ifindex` (the word below `IFACE_INDEX_SLOTS`,
    /// else the hash entry); equal to [`Dataplane::binding`] after every bind/unbind.
    pub fn kernel_binding(&self, ifindex: u32) -> Result<Option<IfacePolicy>> {
        if ifindex < abi::IFACE_INDEX_SLOTS {
            return Ok(IfacePolicy::unpack(self.words.load(ifindex)));
        }
        self.binding(ifindex)
    }

    /// The policy bound to `ifindex`, if any.
    pub fn binding(&self, ifindex: u32) -> Result<Option<IfacePolicy>> {
        let map: BpfHashMap<&MapData, u32, IfacePolicy> =
            BpfHashMap::try_from(self.ebpf.map(MAP_IFACE_POLICY).context("IFACE_POLICY map")?)?;
        match map.get(&ifindex, 0) {
            Ok(b) => Ok(Some(b)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a compiled policy's entries (under its fresh id; nothing reads them yet).
    pub fn write_policy(&mut self, policy: &CompiledPolicy) -> Result<()> {
        let (ports, cidrs) = (self.capacity.port_class_entries, self.capacity.cidr_entries);
        write_lpm(self.ebpf.map_mut(MAP_PORT_CLASS), MAP_PORT_CLASS, ports, &policy.port_classes)?;
        write_hash(self.ebpf.map_mut(MAP_PORT_CLASS_EXACT), MAP_PORT_CLASS_EXACT, ports, &policy.port_exact)?;
        write_lpm(self.ebpf.map_mut(MAP_CIDR_ALLOW), MAP_CIDR_ALLOW, cidrs, &policy.cidrs)?;
        write_hash(self.ebpf.map_mut(MAP_CIDR_ALLOW_EXACT), MAP_CIDR_ALLOW_EXACT, cidrs, &policy.cidr_exact)
    }

    /// Publishes a policy for `ifindex`: one map update, so packets switch from the
    /// old rule set to the new one all at once. The interface keeps its counters slot;
    /// a newly bound one gets a free slot, zeroed first.
    pub fn bind(&mut self, ifindex: u32, policy_id: u32, flags: u32) -> Result<()> {
        let bindings = self.bindings()?;
        let stats_slot = match bindings.get(&ifindex) {
            Some(b) => b.stats_slot,
            None => {
                let used: BTreeSet<u32> = bindings.values().map(|b| b.stats_slot).collect();
                let slot = (0..self.capacity.interfaces).find(|s| !used.contains(s)).ok_or_else(|| {
                    anyhow!("no free interface slot (capacity {} interfaces)", self.capacity.interfaces)
                })?;
                self.zero_stats_slot(slot)?;
                slot
            }
        };
        let binding = IfacePolicy { policy_id, flags, stats_slot, _pad: 0 };
        // The kernel reads the word (interfaces numbered below IFACE_INDEX_SLOTS) or the
        // hash entry (the others); the hash also records every binding for the daemon.
        // Word first: should the daemon die in between, the link left attached makes
        // the next apply bind or unbind the interface again.
        if ifindex < abi::IFACE_INDEX_SLOTS {
            ensure!(
                flags <= IfacePolicy::PACKED_FLAGS_MAX && stats_slot <= IfacePolicy::PACKED_SLOT_MAX,
                "binding of interface {ifindex} does not pack into one word: flags {flags:#x}, slot {stats_slot}"
            );
            self.words.store(ifindex, binding.pack());
        }
        self.iface_map()?.insert(&ifindex, &binding, 0).context("updating IFACE_POLICY")?;
        Ok(())
    }

    fn zero_stats_slot(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?.get() as usize;
        let mut map: PerCpuArray<&mut MapData, IfaceCounters> =
            PerCpuArray::try_from(self.ebpf.map_mut(MAP_IFACE_STATS).context("IFACE_STATS map")?)?;
        let zero = IfaceCounters { packets: [0; 16] };
        map.set(slot, PerCpuValues::try_from(vec![zero; cpus])?, 0).context("zeroing IFACE_STATS slot")?;
        Ok(())
    }

    /// Removes the interface's binding; removing an absent one is not an error.
    pub fn unbind(&mut self, ifindex: u32) -> Result<()> {
        if ifindex < abi::IFACE_INDEX_SLOTS {
            self.words.store(ifindex, 0);
        }
        match self.iface_map()?.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).context("removing IFACE_POLICY entry"),
        }
    }

    /// What the four rule maps hold, read in one pass over their keys.
    pub fn trie_usage(&self) -> Result<TrieUsage> {
        let mut ids = BTreeSet::new();
        let map = |name: &str| self.ebpf.map(name).with_context(|| format!("{name} map"));
        let ports: LpmTrie<&MapData, PortClassKey, PortClass> = LpmTrie::try_from(map(MAP_PORT_CLASS)?)?;
        let port_entries = policy_ids(ports.keys().map(|k| k.map(|k| k.data().policy_id)), &mut ids)?;
        let cidrs: LpmTrie<&MapData, CidrKey, CidrMatch> = LpmTrie::try_from(map(MAP_CIDR_ALLOW)?)?;
        let cidr_entries = policy_ids(cidrs.keys().map(|k| k.map(|k| k.data().policy_id)), &mut ids)?;
        let ports: BpfHashMap<&MapData, PortClassKey, PortClass> =
            BpfHashMap::try_from(map(MAP_PORT_CLASS_EXACT)?)?;
        let port_exact_entries = policy_ids(ports.keys().map(|k| k.map(|k| k.policy_id)), &mut ids)?;
        let cidrs: BpfHashMap<&MapData, CidrExactKey, CidrMatch> =
            BpfHashMap::try_from(map(MAP_CIDR_ALLOW_EXACT)?)?;
        let cidr_exact_entries = policy_ids(cidrs.keys().map(|k| k.map(|k| k.policy_id)), &mut ids)?;
        Ok(TrieUsage { port_entries, port_exact_entries, cidr_entries, cidr_exact_entries, policy_ids: ids })
    }

    /// Deletes every trie entry of a policy id no interface is bound to.
    pub fn collect_garbage(&mut self) -> Result<usize> {
        let live: BTreeSet<u32> = self.bindings()?.values().map(|b| b.policy_id).collect();
        let ebpf = &mut self.ebpf;
        let mut removed = 0;
        for name in [MAP_PORT_CLASS, MAP_CIDR_ALLOW, MAP_PORT_CLASS_EXACT, MAP_CIDR_ALLOW_EXACT] {
            let map = ebpf.map_mut(name).with_context(|| format!("{name} map"))?;
            let keep = |policy_id: &u32| live.contains(policy_id);
            removed += match name {
                MAP_PORT_CLASS => {
                    remove_dead_prefixes::<PortClassKey, PortClass>(map, |k| keep(&k.policy_id))?
                }
                MAP_CIDR_ALLOW => remove_dead_prefixes::<CidrKey, CidrMatch>(map, |k| keep(&k.policy_id))?,
                MAP_PORT_CLASS_EXACT => {
                    remove_dead_keys::<PortClassKey, PortClass>(map, |k| keep(&k.policy_id))?
                }
                MAP_CIDR_ALLOW_EXACT => {
                    remove_dead_keys::<CidrExactKey, CidrMatch>(map, |k| keep(&k.policy_id))?
                }
                _ => unreachable!("the four rule maps"),
            };
        }
        Ok(removed)
    }

    /// Entries stored in the port maps and in the CIDR maps (trie + hash each).
    pub fn entry_counts(&self) -> Result<(usize, usize)> {
        let usage = self.trie_usage()?;
        Ok((usage.port_entries + usage.port_exact_entries, usage.cidr_entries + usage.cidr_exact_entries))
    }

    /// A policy id not used by any binding or stored entry.
    pub fn fresh_policy_id(&mut self) -> Result<u32> {
        let usage = self.trie_usage()?;
        self.fresh_policy_id_after(&usage.policy_ids)
    }

    /// [`Dataplane::fresh_policy_id`] given the ids `stored` in the tries (from
    /// [`Dataplane::trie_usage`], when the caller has read it already).
    pub fn fresh_policy_id_after(&mut self, stored: &BTreeSet<u32>) -> Result<u32> {
        let mut used = stored.clone();
        used.extend(self.bindings()?.values().map(|b| b.policy_id));
        let next = used.iter().next_back().map_or(1, |m| m.wrapping_add(1).max(1));
        if !used.contains(&next) {
            return Ok(next);
        }
        (1..=u32::MAX).find(|i| !used.contains(i)).ok_or_else(|| anyhow!("no free policy id"))
    }

    /// Packets per verdict reason of all managed interfaces, summed over CPUs.
    pub fn verdict_counts(&self) -> Result<BTreeMap<Reason, u64>> {
        let mut out: BTreeMap<Reason, u64> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
        for ifindex in self.bindings()?.keys() {
            for (r, n) in self.iface_counts(*ifindex)? {
                *out.get_mut(&r).expect("all reasons") += n;
            }
        }
        Ok(out)
    }

    /// Sets the connection-tracking idle timeouts.
    pub fn set_timeouts(&mut self, timeouts: &CtTimeouts) -> Result<()> {
        let mut cfg: Array<&mut MapData, CtTimeouts> =
            Array::try_from(self.ebpf.map_mut(MAP_CT_CONFIG).context("CT_CONFIG map")?)?;
        cfg.set(0, timeouts, 0).context("writing CT_CONFIG")?;
        Ok(())
    }

    /// The timeouts in force (all-zero config means the built-in defaults).
    pub fn timeouts(&self) -> Result<CtTimeouts> {
        let cfg: Array<&MapData, CtTimeouts> =
            Array::try_from(self.ebpf.map(MAP_CT_CONFIG).context("CT_CONFIG map")?)?;
        let t = cfg.get(&0, 0)?;
        Ok(if t.tcp_established == 0 { CtTimeouts::DEFAULT } else { t })
    }

    /// Every tracked flow: (key, entry, confirmed).
    pub fn flows(&self) -> Result<Vec<(CtKey, CtEntry, bool)>> {
        let mut out = Vec::new();
        for (name, confirmed) in [(MAP_CT, true), (MAP_CT_NEW, false)] {
            let map: BpfHashMap<&MapData, CtKey, CtEntry> =
                BpfHashMap::try_from(self.ebpf.map(name).with_context(|| format!("{name} map"))?)?;
            for item in map.iter() {
                let (k, v) = item?;
                out.push((k, v, confirmed));
            }
        }
        Ok(out)
    }

    /// The geo-block configuration in force (set id 0: off).
    pub fn geo_config(&self) -> Result<GeoConfig> {
        let cfg: Array<&MapData, GeoConfig> =
            Array::try_from(self.ebpf.map(MAP_GEO_CONFIG).context("GEO_CONFIG map")?)?;
        Ok(cfg.get(&0, 0)?)
    }

    /// Switches the geo block (one map update).
    pub fn set_geo_config(&mut self, config: &GeoConfig) -> Result<()> {
        let mut cfg: Array<&mut MapData, GeoConfig> =
            Array::try_from(self.ebpf.map_mut(MAP_GEO_CONFIG).context("GEO_CONFIG map")?)?;
        cfg.set(0, config, 0).context("writing GEO_CONFIG")?;
        Ok(())
    }

    /// Writes a prefix set under `set_id` (invisible until `GEO_CONFIG` names it).
    pub fn write_geo_set(&mut self, set_id: u32, prefixes: &sg_geo::CountryPrefixes) -> Result<usize> {
        let capacity = self.capacity.geo_entries;
        let mut trie: LpmTrie<&mut MapData, GeoKey, GeoValue> =
            LpmTrie::try_from(self.ebpf.map_mut(MAP_GEO_BLOCK).context("GEO_BLOCK map")?)?;
        let nets = prefixes
            .v4
            .iter()
            .map(|n| ipnet::IpNet::V4(*n))
            .chain(prefixes.v6.iter().map(|n| ipnet::IpNet::V6(*n)));
        let mut written = 0;
        for net in nets {
            let family = if net.addr().is_ipv4() { abi::FAMILY_V4 } else { abi::FAMILY_V6 };
            let key = GeoKey { set_id, family, _pad: [0; 3], addr: crate::compile::addr_bytes(&net) };
            trie.insert(
                &Key::new(GEO_KEY_FIXED_BITS + u32::from(net.prefix_len()), key),
                &GeoValue::default(),
                0,
            )
            .map_err(|e| {
                anyhow!("writing GEO_BLOCK entry {written} ({net}; capacity {capacity} geo_entries): {e}")
            })?;
            written += 1;
        }
        Ok(written)
    }

    /// Deletes every geo entry not in set `keep`; returns how many.
    pub fn delete_geo_sets_except(&mut self, keep: u32) -> Result<usize> {
        let mut trie: LpmTrie<&mut MapData, GeoKey, GeoValue> =
            LpmTrie::try_from(self.ebpf.map_mut(MAP_GEO_BLOCK).context("GEO_BLOCK map")?)?;
        let dead: Vec<Key<GeoKey>> =
            trie.keys().filter_map(|k| k.ok()).filter(|k| k.data().set_id != keep).collect();
        for k in &dead {
            trie.remove(k)?;
        }
        Ok(dead.len())
    }

    /// Entries of geo set `set_id`.
    pub fn geo_set_len(&self, set_id: u32) -> Result<usize> {
        let trie: LpmTrie<&MapData, GeoKey, GeoValue> =
            LpmTrie::try_from(self.ebpf.map(MAP_GEO_BLOCK).context("GEO_BLOCK map")?)?;
        Ok(trie.keys().filter_map(|k| k.ok()).filter(|k| k.data().set_id == set_id).count())
    }

    /// The counter slots of the rules of several interfaces: for each `(ifindex, rule
    /// handles)`, the slots in order. A rule that has a slot keeps it (its counters
    /// survive rule changes that keep the rule); the others get free slots, zeroed
    /// first. Slots of rules no longer listed stay taken until
    /// [`Dataplane::retain_rule_slots`]: the policy in force may count into them until
    /// the switch.
    pub fn rule_slots(&mut self, rules: &[(u32, &[u32])]) -> Result<Vec<Vec<u32>>> {
        let taken = self.slot_assignments()?;
        let used: BTreeSet<u32> = taken.values().copied().collect();
        let mut free = (0..self.capacity.rule_stats).filter(|s| !used.contains(s));
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?.get() as usize;
        let capacity = self.capacity.rule_stats;
        let mut out = Vec::with_capacity(rules.len());
        for &(ifindex, rule_ids) in rules {
            let mut instance = Vec::with_capacity(rule_ids.len());
            for &rule_id in rule_ids {
                let key = RuleStatsKey { ifindex, rule_id };
                if let Some(&slot) = taken.get(&key) {
                    instance.push(slot);
                    continue;
                }
                let slot = free.next().ok_or_else(|| {
                    anyhow!("no free rule counter slot (capacity {capacity} rules on the host: rule_stats)")
                })?;
                let mut stats: PerCpuArray<&mut MapData, RuleCounters> =
                    PerCpuArray::try_from(self.ebpf.map_mut(MAP_RULE_STATS).context("RULE_STATS map")?)?;
                stats.set(slot, PerCpuValues::try_from(vec![RuleCounters::default(); cpus])?, 0)?;
                let mut slots: BpfHashMap<&mut MapData, RuleStatsKey, u32> =
                    BpfHashMap::try_from(self.ebpf.map_mut(MAP_RULE_SLOTS).context("RULE_SLOTS map")?)?;
                slots.insert(&key, &slot, 0).context("recording a rule counter slot")?;
                instance.push(slot);
            }
            out.push(instance);
        }
        Ok(out)
    }

    /// Frees the counter slots of the rules `keep` rejects.
    pub fn retain_rule_slots(&mut self, keep: impl Fn(&RuleStatsKey) -> bool) -> Result<()> {
        let gone: Vec<RuleStatsKey> = self.slot_assignments()?.into_keys().filter(|k| !keep(k)).collect();
        let mut slots: BpfHashMap<&mut MapData, RuleStatsKey, u32> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_RULE_SLOTS).context("RULE_SLOTS map")?)?;
        for k in &gone {
            match slots.remove(k) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// {ifindex, rule} -> counter slot, for every rule of every interface.
    fn slot_assignments(&self) -> Result<BTreeMap<RuleStatsKey, u32>> {
        let slots: BpfHashMap<&MapData, RuleStatsKey, u32> =
            BpfHashMap::try_from(self.ebpf.map(MAP_RULE_SLOTS).context("RULE_SLOTS map")?)?;
        slots.iter().map(|r| r.map_err(Into::into)).collect()
    }

    /// rule id -> (packets, bytes) allowed by the rule on `ifindex`, summed over CPUs.
    pub fn rule_counts(&self, ifindex: u32) -> Result<BTreeMap<u32, (u64, u64)>> {
        let stats: PerCpuArray<&MapData, RuleCounters> =
            PerCpuArray::try_from(self.ebpf.map(MAP_RULE_STATS).context("RULE_STATS map")?)?;
        let mut out = BTreeMap::new();
        for (k, slot) in self.slot_assignments()? {
            if k.ifindex == ifindex {
                let values = stats.get(&slot, 0)?;
                out.insert(k.rule_id, values.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)));
            }
        }
        Ok(out)
    }

    /// Packets per reason of one interface, summed over CPUs (zero when unmanaged).
    pub fn iface_counts(&self, ifindex: u32) -> Result<BTreeMap<Reason, u64>> {
        let mut out: BTreeMap<Reason, u64> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
        let Some(binding) = self.binding(ifindex)? else { return Ok(out) };
        let map: PerCpuArray<&MapData, IfaceCounters> =
            PerCpuArray::try_from(self.ebpf.map(MAP_IFACE_STATS).context("IFACE_STATS map")?)?;
        for v in map.get(&binding.stats_slot, 0)?.iter() {
            for r in Reason::ALL {
                *out.get_mut(&r).expect("all reasons") += v.packets[r as usize];
            }
        }
        Ok(out)
    }

    /// Forgets every tracked flow (both tables); for benchmarks and tests.
    pub fn clear_flows(&mut self) -> Result<()> {
        for name in [MAP_CT, MAP_CT_NEW] {
            let mut map: BpfHashMap<&mut MapData, CtKey, CtEntry> =
                BpfHashMap::try_from(self.ebpf.map_mut(name).with_context(|| format!("{name} map"))?)?;
            let keys: Vec<CtKey> = map.keys().collect::<Result<_, _>>()?;
            for k in keys {
                map.remove(&k)?;
            }
        }
        Ok(())
    }

    /// The loaded object, for tests that run the programs with BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Removes every link, program and map pin under the directory.
    pub fn uninstall(dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        if let Ok(entries) = fs::read_dir(dir.join("links")) {
            for e in entries.flatten() {
                if let Ok(link) = PinnedLink::from_pin(e.path()) {
                    drop(link.unpin());
                } else {
                    fs::remove_file(e.path()).ok();
                }
            }
        }
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
    }
}
