//! Where rewrite keeps its pinned objects in bpffs:
//!
//! ```text
//! <pin dir>/maps/{ADDR,PORT,PREFIX}_{FORWARD,REVERSE}, TABLES_IN_USE, COUNTERS
//!                                                   the table and counters, shared by all interfaces
//! <pin dir>/ifaces/<IF>/<program>_prog              the program instance attached to IF
//! <pin dir>/ifaces/<IF>/<program>_link              its bpf link: removing it detaches
//! ```
//!
//! Everything is created root-only (directories 0700; bpffs creates pins 0600), since
//! whoever can write the maps can redirect the host's traffic.

use std::{
    fs::DirBuilder,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use crate::Error;

/// The default pin directory; `--pin-dir` or `REWRITE_PIN_DIR` overrides it.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/rewrite";

/// `BPF_FS_MAGIC` from linux/magic.h: what statfs reports for a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn ifaces_dir(&self) -> PathBuf {
        self.root.join("ifaces")
    }

    /// The pin directory of `iface`, after checking that the name cannot point
    /// anywhere else (`..`, `/`, empty).
    pub fn iface_dir(&self, iface: &str) -> Result<PathBuf, Error> {
        crate::iface::validate_name(iface)?;
        Ok(self.ifaces_dir().join(iface))
    }

    /// Creates `dir` and its missing parents as root-only directories, after checking
    /// that the nearest existing ancestor is on bpffs (so nothing is pinned into, or
    /// created on, a filesystem that cannot hold BPF objects).
    pub fn create_dir(&self, dir: &Path) -> Result<(), Error> {
        let existing = dir.ancestors().find(|path| path.exists()).unwrap_or(Path::new("/"));
        let stat =
            nix::sys::statfs::statfs(existing).map_err(|errno| Error::io("statfs of", existing, errno.into()))?;
        #[expect(clippy::useless_conversion, reason = "the statfs type field is i64 on x86_64 only")]
        let on_bpffs = i64::from(stat.filesystem_type().0) == BPF_FS_MAGIC;
        if !on_bpffs {
            return Err(Error::NotBpffs { dir: existing.to_path_buf() });
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::io("creating directory", dir, source))
    }

    /// Creates `dir` itself exclusively (its parents as [`Self::create_dir`] does).
    /// Returns false if it already existed.
    pub fn create_dir_exclusive(&self, dir: &Path) -> Result<bool, Error> {
        if let Some(parent) = dir.parent() {
            self.create_dir(parent)?;
        }
        match DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(Error::io("creating directory", dir, source)),
        }
    }
}
