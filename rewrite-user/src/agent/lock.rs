//! One agent per dataplane: its lock in `/run/rewrite`, which also names it (pid and
//! config) to a CLI write it refuses.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use crate::{
    Error,
    dataplane::{
        lock::open_lock_file,
        pins::{PinLayout, RUN_DIR},
    },
};

/// The lock file of the agent for `pins` (`PinLayout::remove_run_records` knows it too).
pub(crate) fn lock_path(pins: &PinLayout) -> PathBuf {
    pins.run_record("agent").with_extension("lock")
}

/// Takes the agent lock for `pins` (one agent per dataplane) and writes this process's
/// id into it. The lock goes with the process, however it ends.
pub(crate) fn take_lock(pins: &PinLayout, config: Option<&Path>) -> Result<Flock<File>, Error> {
    std::fs::create_dir_all(RUN_DIR).map_err(|error| Error::io("creating", RUN_DIR, error))?;
    let path = lock_path(pins);
    let file = open_lock_file(&path)?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| Error::AgentRunning { pid: read_pid(&path), lock: path.clone() })?;
    lock.set_len(0).map_err(|error| Error::io("truncating", &path, error))?;
    // The pid, then the config it follows: what a refused CLI write names.
    writeln!(lock, "{}", std::process::id()).map_err(|error| Error::io("writing", &path, error))?;
    if let Some(config) = config.and_then(|config| std::fs::canonicalize(config).ok()) {
        writeln!(lock, "{}", config.display()).map_err(|error| Error::io("writing", &path, error))?;
    }
    Ok(lock)
}

pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.lines().next()?.trim().parse().ok()
}

/// The process id of the agent running for `pins`, if one is.
pub fn running_agent(pins: &PinLayout) -> Option<u32> {
    let path = lock_path(pins);
    let file = File::open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // Nobody holds it: no agent.
        Ok(_unlocked_on_drop) => None,
        Err(_) => read_pid(&path),
    }
}

/// The config file of the agent running for `pins`, if one runs with a config.
pub fn running_agent_config(pins: &PinLayout) -> Option<PathBuf> {
    running_agent(pins)?;
    std::fs::read_to_string(lock_path(pins)).ok()?.lines().nth(1).map(PathBuf::from)
}

/// Refuses a change to the dataplane by hand while an agent keeps it: the agent would
/// take the change back, or apply its own over it.
pub fn refuse_if_running(pins: &PinLayout) -> Result<(), Error> {
    match running_agent(pins) {
        Some(pid) => Err(Error::AgentKeepsDataplane { pid, config: running_agent_config(pins) }),
        None => Ok(()),
    }
}
