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
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use nix::{
    fcntl::{Flock, FlockArg},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};

use rewrite_common::maps::DEFAULT_MAX_MAPPINGS;

use crate::{
    Error, apply,
    config::{self, Config},
    desired::{Capacity, Change, DesiredTable, Source, is_own},
    fleet::{FleetMapping, FleetSettings},
    follow::{self, KeyChange, Update},
    iface,
    maps::MappingTable,
    metrics::{self, ApplyStatus, FleetStatus},
    pins::{PinLayout, RUN_DIR},
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
    pub pins: PinLayout,
    /// The fleet table to follow, from the command line; overrides the config's
    /// `[fleet]` section.
    pub fleet: Option<FleetSettings>,
}

/// Where the agent records the fleet's state for `rewrite status`.
pub fn fleet_record(pins: &PinLayout) -> PathBuf {
    pins.run_record("fleet").with_extension("json")
}

/// The lock file of the agent for `pins` (`PinLayout::remove_run_records` knows it too).
fn lock_path(pins: &PinLayout) -> PathBuf {
    pins.run_record("agent").with_extension("lock")
}

/// Takes the agent lock for `pins` (one agent per dataplane) and writes this process's
/// id into it. The lock goes with the process, however it ends.
fn take_lock(pins: &PinLayout, config: Option<&Path>) -> Result<Flock<File>, Error> {
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
    // The pid, then the config it follows: what a refused CLI write names.
    writeln!(lock, "{}", std::process::id()).map_err(|error| Error::io("writing", &path, error))?;
    if let Some(config) = config.and_then(|config| std::fs::canonicalize(config).ok()) {
        writeln!(lock, "{}", config.display()).map_err(|error| Error::io("writing", &path, error))?;
    }
    Ok(lock)
}

fn read_pid(path: &Path) -> Option<u32> {
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
    let metrics_task = tokio::spawn(metrics::serve(listener, pins.clone(), status.clone()));

    // The fleet settings are read once: changing them takes a restart.
    let fleet = options.fleet.or_else(|| dataplane.local.as_ref().and_then(|config| config.fleet.clone()));
    let (updates_sender, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let mut fleet_tasks = Vec::new();
    if let Some(fleet) = fleet {
        tracing::info!(endpoints = %fleet.store.endpoints.join(","), prefix = %fleet.store.prefix, "following the fleet table");
        dataplane.follow_fleet(fleet.node.is_some(), &fleet.store.endpoints);
        let table = follow::follow_table(fleet.store.clone(), fleet.retry_max, updates_sender.clone());
        fleet_tasks.push(tokio::spawn(table));
        if let Some(node) = fleet.node {
            fleet_tasks.push(tokio::spawn(follow::keep_registered(
                fleet.store,
                node,
                fleet.retry_max,
                updates_sender.clone(),
            )));
        }
    }
    drop(updates_sender);

    let mut changes = match &options.config {
        Some(path) => watch(path)?,
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

fn now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// What the agent keeps the maps equal to, and what it knows of the fleet table.
/// The only writer of the maps.
struct Dataplane {
    pins: Arc<PinLayout>,
    config_path: Option<PathBuf>,
    /// The last config applied; `None` before the first (or without a config file).
    local: Option<Config>,
    /// The fleet table as last read and watched; `None` if not following one, or
    /// before its first read.
    fleet: Option<BTreeMap<String, Result<FleetMapping, String>>>,
    /// What the maps hold, as admitted; `None` until the first full sync.
    desired: Option<DesiredTable>,
    /// Fleet keys not admitted, with the reason.
    refused: BTreeMap<String, String>,
    /// Fleet keys whose REAL is this host: not applied here (see [`is_own`]).
    own: BTreeSet<String>,
    /// Whether the agent follows a fleet table at all.
    following: bool,
    /// The addresses of the etcd endpoints it follows the table through: no fleet
    /// mapping may touch them, or the table could redirect the agent's own path to it.
    etcd_addrs: Vec<IpAddr>,
    status: Arc<Mutex<ApplyStatus>>,
}

impl Dataplane {
    fn new(pins: Arc<PinLayout>, config_path: Option<PathBuf>, status: Arc<Mutex<ApplyStatus>>) -> Self {
        Self {
            pins,
            config_path,
            local: None,
            fleet: None,
            desired: None,
            refused: BTreeMap::new(),
            own: BTreeSet::new(),
            following: false,
            etcd_addrs: Vec::new(),
            status,
        }
    }

    fn follow_fleet(&mut self, registers: bool, endpoints: &[String]) {
        self.following = true;
        self.etcd_addrs = endpoint_addresses(endpoints);
        // Until the first snapshot, what the maps hold of the fleet is the last state a
        // previous agent knew.
        self.fleet_status(|fleet| {
            fleet.registered = registers.then_some(false);
            fleet.stale = true;
        });
        self.record_fleet_status();
    }

    /// Writes the fleet's state where `rewrite status` reads it.
    fn record_fleet_status(&self) {
        let Ok(status) = self.status.lock() else { return };
        let Some(fleet) = &status.fleet else { return };
        let record = serde_json::json!({
            "connected": fleet.connected,
            "stale": fleet.stale,
            "revision": fleet.revision,
            "mappings": fleet.mappings,
        });
        let path = fleet_record(&self.pins);
        if let Err(error) = std::fs::write(&path, record.to_string()) {
            tracing::debug!(path = %path.display(), %error, "cannot record the fleet state");
        }
    }

    fn fleet_status(&self, change: impl FnOnce(&mut FleetStatus)) {
        if let Ok(mut status) = self.status.lock() {
            change(status.fleet.get_or_insert_with(FleetStatus::default));
        }
    }

    /// Whether an interface of the config exists but runs none of the programs its pins
    /// name (it was deleted and created again): the next apply attaches it again.
    fn an_interface_came_back(&self) -> bool {
        let Some(config) = &self.local else { return false };
        config.interfaces.iter().any(|interface| {
            iface::index(&interface.name).is_ok()
                && matches!(crate::loader::staleness(&self.pins, &interface.name), Ok(Some(_)))
        })
    }

    /// Fleet changes wait for the first valid config, when there is a config file:
    /// before it, a full sync would take the local mappings out of the maps.
    fn ready_for_fleet(&self) -> bool {
        self.config_path.is_none() || self.local.is_some()
    }

    /// Loads, checks and applies the config (with the fleet table as last known),
    /// logging what changed and recording the result for the metrics.
    fn apply_config(&mut self, reason: &str) {
        let Some(path) = self.config_path.clone() else { return };
        let started = Instant::now();
        let result = config::load(&path).map_err(Error::from).and_then(|config| {
            if self.local.as_ref().is_some_and(|local| local.fleet != config.fleet) {
                tracing::warn!("the [fleet] section changed; restart the agent to use the new settings");
            }
            if self.local.is_none() && config.fleet.is_some() {
                self.following = true;
            }
            let prepared = self.sync(&config)?;
            self.local = Some(config);
            Ok(prepared)
        });
        if let Ok(mut status) = self.status.lock() {
            status.timestamp = now();
            status.succeeded = result.is_ok();
            if result.is_ok() {
                status.attempts_succeeded += 1;
            } else {
                status.attempts_failed += 1;
            }
        }
        match result {
            Ok(prepared) => log_applied(&prepared, reason, &path.display().to_string(), started),
            Err(error) => {
                tracing::error!(reason, config = %path.display(), %error, "config refused; the dataplane keeps its state");
            }
        }
    }

    /// Makes the maps equal to `local` plus the fleet table as last known: every
    /// mapping admitted in order (local first, then the fleet's in key order), then the
    /// difference with the live maps applied as a plan.
    fn sync(&mut self, local: &Config) -> Result<apply::Prepared, Error> {
        let _writing = crate::lock::WriteLock::take(&self.pins, "rewrite agent", crate::lock::WAIT)?;
        let capacity = if self.pins.maps_dir().exists() {
            MappingTable::open(&self.pins)?.capacity()
        } else {
            local.max_mappings.unwrap_or(DEFAULT_MAX_MAPPINGS)
        };
        let mut desired = DesiredTable::new(Capacity::of_table(capacity));
        for mapping in &local.mappings {
            desired.admit(mapping.spec, mapping.label.clone(), Source::Local).map_err(|refusal| {
                let (virtual_side, real_side) = config::written(&mapping.spec);
                Error::ApplyRefused {
                    what: "cannot add",
                    mapping: format!("{virtual_side} -> {real_side}"),
                    why: refusal.to_string(),
                }
            })?;
        }
        let mut refused = BTreeMap::new();
        let mut own = BTreeSet::new();
        let local_addrs = iface::local_addresses()?;
        for (key, entry) in self.fleet.iter().flatten() {
            if entry.as_ref().is_ok_and(|mapping| is_own(&mapping.spec, &local_addrs)) {
                own.insert(key.clone());
                continue;
            }
            let admitted = entry.clone().and_then(|mapping| {
                refuse_etcd_capture(&mapping.spec, &self.etcd_addrs)?;
                desired
                    .admit(mapping.spec, mapping.label, Source::Fleet)
                    .map(drop)
                    .map_err(|refusal| refusal.to_string())
            });
            if let Err(why) = admitted {
                refused.insert(key.clone(), why);
            }
        }
        let config = Config { mappings: desired.mappings(), fleet: None, ..local.clone() };
        let origin = self.config_path.clone().unwrap_or_else(|| PathBuf::from("the fleet table"));
        // Without a fresh copy of the fleet table (etcd unreachable since the start),
        // a mapping the maps hold beyond the local config may be the fleet's: it stays
        // until the table says otherwise. Only what the previous local config had goes.
        let previous_local: BTreeSet<String> = if self.following && self.fleet.is_none() {
            self.local
                .iter()
                .flat_map(|config| config.mappings.iter().map(|mapping| config::written(&mapping.spec).0))
                .collect()
        } else {
            BTreeSet::new()
        };
        let keep_fleet_state = self.following && self.fleet.is_none();
        let prepared = apply::prepare_keeping(&self.pins, &origin, &config, |spec| {
            keep_fleet_state && !previous_local.contains(&config::written(spec).0)
        })?;
        if keep_fleet_state {
            tracing::warn!(
                "no copy of the fleet table yet: the mappings the maps hold beyond the local config stay until etcd answers"
            );
        }
        apply::execute(&self.pins, &prepared)?;
        self.log_refusals(&refused);
        self.refused = refused;
        self.own = own;
        self.desired = Some(desired);
        self.publish_fleet_counts();
        Ok(prepared)
    }

    fn log_refusals(&self, refused: &BTreeMap<String, String>) {
        for (key, why) in refused.iter().filter(|(key, _)| !self.refused.contains_key(*key)) {
            tracing::warn!(key = %key, %why, "fleet mapping not applied");
        }
    }

    fn publish_fleet_counts(&self) {
        let (mappings, refused, own) =
            (self.fleet.as_ref().map_or(0, BTreeMap::len), self.refused.len(), self.own.len());
        self.fleet_status(|fleet| {
            fleet.mappings = mappings;
            fleet.refused = refused;
            fleet.own = own;
        });
    }

    fn fleet_update(&mut self, update: Update) {
        match update {
            Update::Snapshot { revision, entries, reason } => {
                let started = Instant::now();
                self.fleet = Some(entries.into_iter().collect());
                self.full_sync(reason, revision, started);
                self.record_fleet_status();
            }
            Update::Changes { revision, changes } => self.apply_changes(revision, changes),
            Update::Disconnected { error } => {
                tracing::warn!(%error, "lost the fleet table; the dataplane keeps the last state it knew, retrying");
                self.fleet_status(|fleet| {
                    if fleet.connected {
                        fleet.disconnects += 1;
                    }
                    fleet.connected = false;
                    fleet.stale = true;
                });
                self.record_fleet_status();
            }
            Update::Registered { pairs } => {
                for (real, virtual_addr) in &pairs {
                    tracing::info!(%real, %virtual_addr, "registered in the fleet table");
                    // Ingress restores packets to REAL to this VIRTUAL: the host must own it.
                    match iface::ensure_loopback_address(*virtual_addr) {
                        Ok(true) => tracing::info!(%virtual_addr, "added the claimed VIRTUAL to lo"),
                        Ok(false) => {}
                        Err(error) => tracing::error!(%virtual_addr, %error, "cannot add the claimed VIRTUAL to lo"),
                    }
                }
                self.fleet_status(|fleet| fleet.registered = Some(true));
            }
            Update::RegistrationFailed { error } => {
                tracing::error!(%error, "fleet registration failed; retrying");
                self.fleet_status(|fleet| fleet.registered = Some(false));
            }
        }
    }

    fn full_sync(&mut self, reason: &'static str, revision: i64, started: Instant) {
        self.fleet_status(|fleet| {
            fleet.connected = true;
            *fleet.resyncs.entry(reason).or_default() += 1;
        });
        if !self.ready_for_fleet() {
            tracing::warn!("fleet table read, but the config is not valid yet: waiting for it before syncing");
            return;
        }
        let local = self.local.clone().unwrap_or_else(empty_config);
        match self.sync(&local) {
            Ok(prepared) => {
                log_applied(&prepared, reason, "fleet table", started);
                let seconds = started.elapsed().as_secs_f64();
                drop(prepared);
                release_freed_memory();
                self.fleet_status(|fleet| {
                    fleet.revision = revision;
                    fleet.last_sync_seconds = seconds;
                    fleet.stale = false;
                });
            }
            Err(error) => tracing::error!(reason, %error, "fleet sync failed; the dataplane keeps its state"),
        }
    }

    /// Applies single changes from the watch: a few map writes each. A change the table
    /// refuses is logged and counted, and a mapping it replaces is taken out (the maps
    /// never keep a mapping the table no longer has). Refused keys are tried again after
    /// every change, since a change can free what they need.
    fn apply_changes(&mut self, revision: i64, changes: Vec<KeyChange>) {
        let Some(fleet) = self.fleet.as_mut() else { return };
        for (key, entry) in &changes {
            match entry {
                Some(entry) => fleet.insert(key.clone(), entry.clone()),
                None => fleet.remove(key),
            };
        }
        if !self.ready_for_fleet() || self.desired.is_none() {
            return;
        }
        let writing = crate::lock::WriteLock::take(&self.pins, "rewrite agent", crate::lock::WAIT);
        let table = writing.and_then(|writing| MappingTable::open(&self.pins).map(|table| (writing, table)));
        let result = table.and_then(|(_writing, mut table)| {
            let local_addrs = iface::local_addresses()?;
            let mut writes = Vec::new();
            for (key, entry) in changes {
                writes.push(self.admit_change(&key, entry, &local_addrs));
            }
            let retry: Vec<String> = self.refused.keys().cloned().collect();
            for key in retry {
                if let Some(Ok(mapping)) = self.fleet.as_ref().and_then(|fleet| fleet.get(&key)).cloned() {
                    writes.push(self.admit_change(&key, Some(Ok(mapping)), &local_addrs));
                }
            }
            for change in &writes {
                apply::apply_change(&mut table, change)?;
            }
            Ok(writes.len())
        });
        self.publish_fleet_counts();
        match result {
            Ok(count) => {
                tracing::debug!(revision, count, "applied fleet changes");
                self.fleet_status(|fleet| {
                    fleet.revision = revision;
                    fleet.changes += 1;
                });
            }
            Err(error) => {
                // The maps may now differ from what was admitted: start again from the table.
                tracing::error!(revision, %error, "a fleet change could not be written; syncing the whole table again");
                self.full_sync("repair", revision, Instant::now());
            }
        }
    }

    /// Admits one key's new state into the desired table and says what the maps must do.
    fn admit_change(&mut self, key: &str, entry: Option<Result<FleetMapping, String>>, local: &[IpAddr]) -> Change {
        let Some(desired) = self.desired.as_mut() else { return Change::Unchanged };
        self.own.remove(key);
        let refusal = match entry {
            None => {
                self.refused.remove(key);
                return desired.remove(key, Source::Fleet);
            }
            Some(Ok(mapping)) if is_own(&mapping.spec, local) => {
                self.refused.remove(key);
                self.own.insert(key.to_owned());
                return desired.remove(key, Source::Fleet);
            }
            Some(Ok(mapping)) => match refuse_etcd_capture(&mapping.spec, &self.etcd_addrs) {
                Err(refusal) => refusal,
                Ok(()) => match desired.admit(mapping.spec, mapping.label, Source::Fleet) {
                    Ok(change) => {
                        self.refused.remove(key);
                        return change;
                    }
                    Err(refusal) => refusal.to_string(),
                },
            },
            Some(Err(why)) => why,
        };
        if self.refused.insert(key.to_owned(), refusal.clone()).is_none() {
            tracing::warn!(key, why = %refusal, "fleet mapping not applied");
        }
        desired.remove(key, Source::Fleet)
    }
}

/// The addresses of etcd endpoints (`https://10.1.0.1:2379`, `http://etcd.local:2379`),
/// names resolved once, at start.
fn endpoint_addresses(endpoints: &[String]) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs as _;
    let mut addresses = Vec::new();
    for endpoint in endpoints {
        let authority = endpoint.split_once("://").map_or(endpoint.as_str(), |(_, rest)| rest);
        let authority = authority.split('/').next().unwrap_or_default();
        let host_port = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:2379") };
        match host_port.to_socket_addrs() {
            Ok(resolved) => addresses.extend(resolved.map(|address| address.ip())),
            Err(error) => {
                tracing::warn!(endpoint, %error, "cannot resolve an etcd endpoint to keep it out of the fleet table")
            }
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Refuses a fleet mapping that touches an address of the etcd endpoints the agent
/// follows the table through: as a VIRTUAL it would send the agent's connection to
/// etcd to the REAL, as a REAL it would disguise etcd's replies. Whoever can write the
/// table must not be able to take the agent's path to it.
fn refuse_etcd_capture(spec: &rewrite_common::spec::MappingSpec, etcd: &[IpAddr]) -> Result<(), String> {
    use rewrite_common::{spec::MappingSpec, validate::in_prefix};
    let touches = |addr: &IpAddr| match spec {
        MappingSpec::Address { virtual_addr, real_addr } => addr == virtual_addr || addr == real_addr,
        MappingSpec::Ports(ports) => *addr == ports.virtual_addr || *addr == ports.real_addr,
        MappingSpec::Prefix(prefix) => {
            addr.is_ipv4() == prefix.virtual_net.is_ipv4()
                && (in_prefix(*addr, prefix.virtual_net, prefix.len) || in_prefix(*addr, prefix.real_net, prefix.len))
        }
    };
    match etcd.iter().find(|addr| touches(addr)) {
        Some(addr) => Err(format!(
            "it touches {addr}, an address of the etcd endpoints this agent follows the fleet table through: it would \
             capture the agent's own path to etcd"
        )),
        None => Ok(()),
    }
}

/// A full sync of a large table allocates a few times what the agent keeps (the
/// snapshot, the plan, the model it is rehearsed on). glibc keeps freed memory in its
/// heap; give it back, so that the agent's resident size is what it holds.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it is
    // safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn empty_config() -> Config {
    Config { max_mappings: None, interfaces: Vec::new(), mappings: Vec::new(), fleet: None, bounce: None, gate: None }
}

fn log_applied(prepared: &apply::Prepared, reason: &str, source: &str, started: Instant) {
    let plan = &prepared.plan;
    tracing::info!(
        reason,
        source,
        attached = prepared.to_attach.len(),
        added = plan.added.len(),
        removed = plan.removed.len() + plan.orphans.len(),
        changed = plan.changed.len(),
        seconds = started.elapsed().as_secs_f64(),
        "applied"
    );
    for line in plan.lines() {
        tracing::debug!(change = %line, "mapping");
    }
    for line in prepared.bounce.iter().flat_map(apply::BouncePlan::lines) {
        tracing::info!(change = %line, "bounce");
    }
    for line in prepared.gate.iter().flat_map(crate::gate::GatePlan::lines) {
        tracing::info!(change = %line, "gate");
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
