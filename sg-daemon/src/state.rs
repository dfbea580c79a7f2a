//! Adapter: the stored desired state (`<state-dir>/state.yaml`) and the lock that
//! serialises operators.
//!
//! The file is replaced atomically (temp file, fsync, rename, fsync of the directory),
//! so a crash at any moment leaves the old or the new state whole.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::desired::DesiredState;

pub struct StateStore {
    dir: PathBuf,
    /// Held for the life of the store: an exclusive flock on `<dir>/lock`.
    _lock: File,
}

impl StateStore {
    /// Opens the store, waiting for any other operator command to finish first.
    pub fn open_locked(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // SAFETY: flock on a valid descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the state directory");
        }
        Ok(StateStore { dir: dir.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("state.yaml")
    }

    /// The stored state; empty when nothing was ever applied.
    pub fn load(&self) -> Result<DesiredState> {
        let path = self.path();
        if !path.exists() {
            return Ok(DesiredState::default());
        }
        DesiredState::from_file(&path)
            .with_context(|| format!("stored state {} is unreadable", path.display()))
    }

    pub fn save(&self, state: &DesiredState) -> Result<()> {
        let path = self.path();
        let tmp = self.dir.join(".state.yaml.tmp");
        let text = serde_yaml::to_string(state)?;
        {
            let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(b"# Managed by sg-daemon; edit with `sg-daemon apply` or the rule commands.\n")?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}
