//! One writer at a time per dataplane. Every command that changes the maps, the
//! programs or the attachments of a pin directory takes its write lock (a file lock in
//! `/run/rewrite`, named after the pin directory), and so does the agent around each
//! change it makes: two writers never interleave their map writes, so the table's
//! invariants (a reverse entry for every forward one, each REAL claimed once, the
//! tables-in-use flags) hold between any two commands.
//!
//! The lock is an `flock`: it goes with the process that holds it, however that ends.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};

use crate::{
    Error,
    dataplane::pins::{PinLayout, RUN_DIR},
};

/// How long a writer waits for another to finish before it gives up and says who holds
/// the lock. Single commands take milliseconds; a large apply a few seconds.
pub const WAIT: Duration = Duration::from_secs(30);

/// The held write lock of one pin directory; released on drop.
#[derive(Debug)]
pub struct WriteLock {
    _lock: Flock<File>,
}

/// Opens (creating, root-only) the lock file at `path` without truncating it: its
/// contents name the current holder.
pub(crate) fn open_lock_file(path: &Path) -> Result<File, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|error| Error::io("opening", path, error))
}

fn path(pins: &PinLayout) -> PathBuf {
    pins.run_record("writer").with_extension("lock")
}

impl WriteLock {
    /// Takes the write lock of `pins` for `holder` (what the lock file then names, for
    /// a writer that has to wait), waiting up to `wait` for the current holder.
    pub fn take(pins: &PinLayout, holder: &str, wait: Duration) -> Result<Self, Error> {
        let path = path(pins);
        let deadline = Instant::now() + wait;
        loop {
            match try_lock(&path, holder)? {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(holder) => return Err(Error::WriterBusy { holder, lock: path, waited: wait }),
            }
        }
    }
}

/// Takes the lock file at `path` (in `RUN_DIR`, created root-only) without waiting and
/// writes "PID HOLDER" into it; or, when another process holds it, returns what that
/// one wrote there.
pub(crate) fn try_lock(path: &Path, holder: &str) -> Result<Result<Flock<File>, String>, Error> {
    std::fs::create_dir_all(RUN_DIR).map_err(|error| Error::io("creating", RUN_DIR, error))?;
    match Flock::lock(open_lock_file(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(|error| Error::io("truncating", path, error))?;
            writeln!(lock, "{} {holder}", std::process::id()).map_err(|error| Error::io("writing", path, error))?;
            Ok(Ok(lock))
        }
        Err(_) => Ok(Err(std::fs::read_to_string(path).unwrap_or_default().trim().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_waits_and_then_names_the_first() {
        let pins = PinLayout::new(format!("/tmp/rewrite-lock-test-{}", std::process::id()));
        let first = WriteLock::take(&pins, "rewrite map add", Duration::ZERO).expect("the first writer");
        // flock locks belong to open file descriptions: a second open in the same
        // process contends like another process would.
        let error = WriteLock::take(&pins, "rewrite apply", Duration::from_millis(100)).expect_err("held");
        let text = error.to_string();
        assert!(text.contains(&format!("{} rewrite map add", std::process::id())), "{text}");
        drop(first);
        let again = WriteLock::take(&pins, "rewrite apply", Duration::ZERO).expect("free again");
        drop(again);
        let _ = std::fs::remove_file(path(&pins));
    }
}
