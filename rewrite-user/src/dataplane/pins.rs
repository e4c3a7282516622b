//! Where rewrite keeps its pinned objects in bpffs:
//!
//! ```text
//! <pin dir>/maps/{ADDR,PORT,PREFIX}_{FORWARD,REVERSE}, TABLES_IN_USE, ADDR_FILTER, COUNTERS
//!                                                   the table and counters, shared by all interfaces
//! <pin dir>/ifaces/<IF>/<program>_prog              the program instance attached to IF
//! <pin dir>/ifaces/<IF>/<program>_link              its bpf link: removing it detaches
//! ```
//!
//! bpffs holds only BPF objects, so the few plain records about a pin directory live
//! under `/run/rewrite`, named after it: the agent's lock, and the version of the
//! programs attached to each interface.
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

/// Where the plain records about pin directories live.
pub const RUN_DIR: &str = "/run/rewrite";

/// `BPF_FS_MAGIC` from linux/magic.h: what statfs reports for a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` lies on a BPF filesystem.
fn is_bpffs(path: &Path) -> Result<bool, Error> {
    let stat = nix::sys::statfs::statfs(path).map_err(|errno| Error::io("statfs of", path, errno.into()))?;
    #[expect(clippy::useless_conversion, reason = "the statfs type field is i64 on x86_64 only")]
    Ok(i64::from(stat.filesystem_type().0) == BPF_FS_MAGIC)
}

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

    /// `/run/rewrite/<kind><pin dir with every other character as '_'>`: a record about
    /// this pin directory.
    pub fn run_record(&self, kind: &str) -> PathBuf {
        let name: String =
            self.root.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        Path::new(RUN_DIR).join(format!("{kind}{name}"))
    }

    /// Records that the programs attached to `iface` are of build `version`.
    pub fn record_version(&self, iface: &str, version: &str) -> Result<(), Error> {
        let dir = self.run_record("versions");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|error| Error::io("creating", &dir, error))?;
        let path = dir.join(iface);
        std::fs::write(&path, version).map_err(|error| Error::io("writing", &path, error))
    }

    /// The build of the programs attached to `iface`, if recorded.
    pub fn recorded_version(&self, iface: &str) -> Option<String> {
        std::fs::read_to_string(self.run_record("versions").join(iface)).ok().map(|text| text.trim().to_owned())
    }

    /// Removes every record about this pin directory (`down`, and tests cleaning up):
    /// the versions, the agent's lock file and fleet state, the write and trace locks,
    /// and which clsact qdiscs rewrite added.
    pub fn remove_run_records(&self) {
        self.forget_version(None);
        let _ = std::fs::remove_file(self.run_record("agent").with_extension("lock"));
        let _ = std::fs::remove_file(self.run_record("fleet").with_extension("json"));
        let _ = std::fs::remove_file(self.run_record("writer").with_extension("lock"));
        let _ = std::fs::remove_file(self.run_record("trace").with_extension("lock"));
        let _ = std::fs::remove_dir_all(self.run_record("clsact"));
    }

    /// Forgets the version of `iface`'s programs (`None`: of every interface).
    pub fn forget_version(&self, iface: Option<&str>) {
        let dir = self.run_record("versions");
        let _ = match iface {
            Some(iface) => std::fs::remove_file(dir.join(iface)),
            None => std::fs::remove_dir_all(dir),
        };
    }

    /// Refuses a pin directory (or its `maps` and `ifaces` directories) that is not
    /// root's alone: whoever can write into it could plant maps or programs that rewrite
    /// would then load traffic through. A directory that does not exist yet is fine (it
    /// is created root-only).
    pub fn check_root_only(&self) -> Result<(), Error> {
        for dir in [self.root.clone(), self.maps_dir(), self.ifaces_dir()] {
            let metadata = match std::fs::symlink_metadata(&dir) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(Error::io("checking", &dir, error)),
            };
            // A directory that cannot hold pins at all says so first.
            if !is_bpffs(&dir)? {
                return Err(Error::NotBpffs { dir });
            }
            use std::os::unix::fs::MetadataExt as _;
            let mode = metadata.mode() & 0o7777;
            if !metadata.is_dir() || metadata.uid() != 0 || mode & 0o077 != 0 {
                return Err(Error::UntrustedPinDir { dir, uid: metadata.uid(), mode, is_dir: metadata.is_dir() });
            }
        }
        Ok(())
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
        crate::dataplane::iface::validate_name(iface)?;
        Ok(self.ifaces_dir().join(iface))
    }

    /// Creates `dir` and its missing parents as root-only directories, after checking
    /// that the nearest existing ancestor is on bpffs (so nothing is pinned into, or
    /// created on, a filesystem that cannot hold BPF objects).
    pub fn create_dir(&self, dir: &Path) -> Result<(), Error> {
        let existing = dir.ancestors().find(|path| path.exists()).unwrap_or(Path::new("/"));
        if !is_bpffs(existing)? {
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
