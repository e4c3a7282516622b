//! `rewrite agent`: keeps the dataplane equal to a config file. It applies the file at
//! start, again whenever it changes (inotify on its directory, so that editors that
//! replace the file are seen too) and on SIGHUP, logs in structured form, and serves
//! Prometheus metrics.
//!
//! The agent holds no state the dataplane needs: programs, links and maps are pinned,
//! so a killed agent loses no packet, and a new one adopts the pins as they are (an
//! attached interface is never re-attached). An invalid config is logged and counted;
//! the dataplane keeps the state it has.

use std::{
    fs::File,
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use nix::{
    fcntl::{Flock, FlockArg},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};

use crate::{
    Error, apply, config,
    metrics::{self, ApplyStatus},
    pins::{PinLayout, RUN_DIR},
};

/// Changes to the config closer together than this are applied once.
const SETTLE: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct AgentOptions {
    pub config: PathBuf,
    pub metrics: SocketAddr,
    pub pins: PinLayout,
}

/// The lock file of the agent for `pins` (`PinLayout::remove_run_records` knows it too).
fn lock_path(pins: &PinLayout) -> PathBuf {
    pins.run_record("agent").with_extension("lock")
}

/// Takes the agent lock for `pins` (one agent per dataplane) and writes this process's
/// id into it. The lock goes with the process, however it ends.
fn take_lock(pins: &PinLayout) -> Result<Flock<File>, Error> {
    std::fs::create_dir_all(RUN_DIR).map_err(|error| Error::io("creating", RUN_DIR, error))?;
    let path = lock_path(pins);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|error| Error::io("opening", &path, error))?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| Error::AgentRunning { pid: read_pid(&path), lock: path.clone() })?;
    lock.set_len(0).map_err(|error| Error::io("truncating", &path, error))?;
    writeln!(lock, "{}", std::process::id()).map_err(|error| Error::io("writing", &path, error))?;
    Ok(lock)
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
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

/// Runs the agent until SIGTERM or SIGINT. Fails at start only if another agent runs
/// for the same pins, or if the metrics address cannot be bound.
pub fn run(options: AgentOptions) -> Result<(), Error> {
    let _lock = take_lock(&options.pins)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::io("starting", "the agent's runtime", error))?;
    runtime.block_on(serve(options))
}

async fn serve(options: AgentOptions) -> Result<(), Error> {
    let pins = Arc::new(options.pins);
    let status = Arc::new(Mutex::new(ApplyStatus::default()));
    let config_path = options.config;
    // A config refused at start is logged and counted like any other: the agent stays up,
    // serves metrics that show it, and applies the file once it is fixed.
    let _ = apply_config(&pins, &config_path, &status, "start");

    let listener = tokio::net::TcpListener::bind(options.metrics)
        .await
        .map_err(|source| Error::MetricsBind { address: options.metrics, source })?;
    tracing::info!(address = %options.metrics, "serving metrics at /metrics");
    let metrics_task = tokio::spawn(metrics::serve(listener, pins.clone(), status.clone()));

    let mut changes = watch(&config_path)?;
    let mut hangup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let reason = tokio::select! {
            _ = hangup.recv() => "SIGHUP",
            Some(()) = changes.recv() => {
                // Editors write in steps: wait for the file to settle, then apply once.
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                "config changed"
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        // A refused config is logged and counted; the dataplane keeps its state.
        let _ = apply_config(&pins, &config_path, &status, reason);
    }
    metrics_task.abort();
    tracing::info!("agent stopping; the dataplane stays pinned and keeps running");
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, Error> {
    tokio::signal::unix::signal(kind).map_err(|error| Error::io("handling", "a signal", error))
}

/// Loads, checks and applies the config, logging what changed and recording the
/// result for the metrics.
fn apply_config(pins: &PinLayout, path: &Path, status: &Mutex<ApplyStatus>, reason: &str) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let result = config::load(path).map_err(Error::from).and_then(|config| {
        let prepared = apply::prepare(pins, path, &config)?;
        apply::execute(pins, &prepared)?;
        Ok(prepared)
    });
    let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
    if let Ok(mut status) = status.lock() {
        status.timestamp = timestamp;
        status.succeeded = result.is_ok();
        if result.is_ok() {
            status.attempts_succeeded += 1;
        } else {
            status.attempts_failed += 1;
        }
    }
    match result {
        Ok(prepared) => {
            let plan = &prepared.plan;
            tracing::info!(
                reason,
                config = %path.display(),
                attached = prepared.to_attach.len(),
                added = plan.added.len(),
                removed = plan.removed.len() + plan.orphans.len(),
                changed = plan.changed.len(),
                seconds = started.elapsed().as_secs_f64(),
                "applied config"
            );
            for line in plan.lines() {
                tracing::debug!(change = %line, "mapping");
            }
            Ok(())
        }
        Err(error) => {
            tracing::error!(reason, config = %path.display(), %error, "config refused; the dataplane keeps its state");
            Err(error)
        }
    }
}

/// Events for changes to the file at `path`: inotify watches its directory, since an
/// editor or a deploy tool often replaces the file rather than writing it in place.
fn watch(path: &Path) -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, Error> {
    let directory = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(ToOwned::to_owned);
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC).map_err(|errno| Error::io("watching", directory, errno.into()))?;
    let flags = AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE;
    inotify.add_watch(directory, flags).map_err(|errno| Error::io("watching", directory, errno.into()))?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    // A blocking read in a thread of its own: simpler than registering the inotify
    // descriptor with the runtime, and the agent has nothing else to do with it.
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            while let Ok(events) = inotify.read_events() {
                let ours = events.iter().any(|event| event.name.as_deref() == name.as_deref());
                if ours && sender.send(()).is_err() {
                    return;
                }
            }
        })
        .map_err(|error| Error::io("starting", "the config watcher", error))?;
    Ok(receiver)
}
