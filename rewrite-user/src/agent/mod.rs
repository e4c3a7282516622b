//! `rewrite agent`: keeps the dataplane equal to a config file. It applies the file at
//! start, again whenever it changes (inotify on its directory, so that editors that
//! replace the file are seen too) and on SIGHUP, logs in structured form, and serves
//! Prometheus metrics.
//!
//! The agent holds no state the dataplane needs: programs, links and maps are pinned,
//! so a killed agent loses no packet, and a new one adopts the pins as they are (an
//! attached interface is never re-attached). An invalid config is logged and counted;
//! the dataplane keeps the state it has.

mod dataplane;
mod fleet;
pub mod lock;
pub mod metrics;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

pub use self::lock::{refuse_if_running, running_agent, running_agent_config};
use self::{dataplane::Dataplane, lock::take_lock, metrics::ApplyStatus};
use crate::{
    Error,
    dataplane::pins::PinLayout,
    fleet::{FleetSettings, watch as fleet_watch},
};

/// Changes to the config closer together than this are applied once.
const SETTLE: Duration = Duration::from_millis(100);
/// How often the agent checks that its interfaces still run its programs.
const INTERFACE_CHECK: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct AgentOptions {
    /// The config file, if any (an agent may follow a fleet table alone).
    pub config: Option<PathBuf>,
    pub metrics: SocketAddr,
    /// Which mappings get series of their own.
    pub metrics_mappings: metrics::MappingSeries,
    pub pins: PinLayout,
    /// The fleet table to follow, from the command line; overrides the config's
    /// `[fleet]` section.
    pub fleet: Option<FleetSettings>,
}

/// Where the agent records the fleet's state for `rewrite status`.
pub fn fleet_record(pins: &PinLayout) -> PathBuf {
    pins.run_record("fleet").with_extension("json")
}

/// Runs the agent until SIGTERM or SIGINT. Fails at start only if another agent runs
/// for the same pins, or if the metrics address cannot be bound.
pub fn run(options: AgentOptions) -> Result<(), Error> {
    let _lock = take_lock(&options.pins, options.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::io("starting", "the agent's runtime", error))?;
    runtime.block_on(serve(options))
}

async fn serve(options: AgentOptions) -> Result<(), Error> {
    let pins = Arc::new(options.pins);
    let status = Arc::new(Mutex::new(ApplyStatus::default()));
    let mut dataplane = Dataplane::new(pins.clone(), options.config.clone(), status.clone());
    // Known before the first apply, which must already keep the fleet's last state
    // (the [fleet] section of the config counts too, once it is read).
    dataplane.following = options.fleet.is_some();
    // A config refused at start is logged and counted like any other: the agent stays up,
    // serves metrics that show it, and applies the file once it is fixed.
    dataplane.apply_config("start");

    let listener = tokio::net::TcpListener::bind(options.metrics)
        .await
        .map_err(|source| Error::MetricsBind { address: options.metrics, source })?;
    tracing::info!(address = %options.metrics, "serving metrics at /metrics");
    let metrics_task = tokio::spawn(metrics::serve(listener, pins.clone(), status.clone(), options.metrics_mappings));

    // The fleet settings are read once: changing them takes a restart.
    let fleet = options.fleet.or_else(|| dataplane.local.as_ref().and_then(|config| config.fleet.clone()));
    let (updates_sender, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let mut fleet_tasks = Vec::new();
    if let Some(fleet) = fleet {
        tracing::info!(endpoints = %fleet.store.endpoints.join(","), prefix = %fleet.store.prefix, "following the fleet table");
        if let Some(zone) = &fleet.zone {
            tracing::info!(%zone, "applying this zone's REAL of mappings that have one");
        }
        dataplane.follow_fleet(fleet.node.is_some(), &fleet.store.all_endpoints(), fleet.zone.clone());
        let table = fleet_watch::follow_table(fleet.store.for_watching(), fleet.retry_max, updates_sender.clone());
        fleet_tasks.push(tokio::spawn(table));
        if let Some(node) = fleet.node {
            fleet_tasks.push(tokio::spawn(fleet_watch::keep_registered(
                fleet.store,
                node,
                fleet.retry_max,
                updates_sender.clone(),
            )));
        }
    }
    drop(updates_sender);

    let mut changes = match &options.config {
        Some(path) => watch_config_file(path)?,
        // No file to watch: a channel that never delivers.
        None => tokio::sync::mpsc::unbounded_channel().1,
    };
    // A configured interface deleted and created again has lost its programs: checked
    // every few seconds, and attached again.
    let mut interface_check = tokio::time::interval(INTERFACE_CHECK);
    interface_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            Some(update) = updates.recv() => {
                dataplane.fleet_update(update);
                continue;
            }
            _ = interface_check.tick() => {
                if !dataplane.an_interface_came_back() {
                    continue;
                }
                "an interface was created again"
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        dataplane.apply_config(reason);
    }
    metrics_task.abort();
    for task in fleet_tasks {
        task.abort();
    }
    tracing::info!("agent stopping; the dataplane stays pinned and keeps running");
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, Error> {
    tokio::signal::unix::signal(kind).map_err(|error| Error::io("handling", "a signal", error))
}

pub(crate) fn now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// Events for changes to the file at `path`: inotify watches its directory, since an
/// editor or a deploy tool often replaces the file rather than writing it in place.
fn watch_config_file(path: &Path) -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, Error> {
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
