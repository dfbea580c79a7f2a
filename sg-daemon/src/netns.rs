//! Adapter: run in another network namespace (`--netns NAME`), where the instances'
//! host-side interfaces live. Interface names and indexes are per namespace; BPF
//! objects and pins are not.
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};

/// Moves the calling thread into `/run/netns/<name>`. Call before starting threads.
pub fn enter(name: &str) -> Result<()> {
    if name.contains('/') || name.is_empty() {
        bail!("invalid network namespace name `{name}`");
    }
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).with_context(|| format!("network namespace {name} not found ({path})"))?;
    // SAFETY: setns with a valid namespace fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {name}"));
    }
    Ok(())
}

/// The index of interface `name` in the current namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}
