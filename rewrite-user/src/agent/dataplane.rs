//! What the agent keeps the maps equal to: the local config, plus the fleet table as
//! last known, admitted together and applied as one plan.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use rewrite_common::{
    maps::DEFAULT_MAX_MAPPINGS,
    spec::{MappingKey, MappingSpec},
};

use crate::{
    Error,
    agent::{
        fleet_record,
        metrics::{ApplyStatus, FleetStatus},
        now,
    },
    bounce::plan::BouncePlan,
    config::{self, Config, apply},
    dataplane::{
        iface,
        lock::{WAIT, WriteLock},
        pins::PinLayout,
        status::staleness,
    },
    fleet::FleetMapping,
    gate::GatePlan,
    table::{
        admission::{Capacity, DesiredTable, Source, is_own},
        live::MappingTable,
    },
};

/// What the agent keeps the maps equal to, and what it knows of the fleet table.
/// The only writer of the maps.
pub(super) struct Dataplane {
    pub(super) pins: Arc<PinLayout>,
    pub(super) config_path: Option<PathBuf>,
    /// The last config applied; `None` before the first (or without a config file).
    pub(super) local: Option<Config>,
    /// The fleet table as last read and watched; `None` if not following one, or
    /// before its first read.
    pub(super) fleet: Option<BTreeMap<String, Result<FleetMapping, String>>>,
    /// What the maps hold, as admitted; `None` until the first full sync.
    pub(super) desired: Option<DesiredTable>,
    /// Fleet keys not admitted, with the reason.
    pub(super) refused: BTreeMap<String, String>,
    /// Fleet keys whose REAL is this host: not applied here (see [`is_own`]).
    pub(super) own: BTreeSet<String>,
    /// Whether the agent follows a fleet table at all.
    pub(super) following: bool,
    /// The addresses of the etcd endpoints it follows the table through: no fleet
    /// mapping may touch them, or the table could redirect the agent's own path to it.
    pub(super) etcd_addrs: Vec<IpAddr>,
    /// This node's zone: which REAL of a fleet mapping with a REAL per zone applies.
    pub(super) zone: Option<String>,
    pub(super) status: Arc<Mutex<ApplyStatus>>,
}

/// The addresses of etcd endpoints (`https://10.1.0.1:2379`, `http://etcd.local:2379`),
/// names resolved once, at start.
pub(super) fn endpoint_addresses(endpoints: &[String]) -> Vec<IpAddr> {
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
pub(super) fn refuse_etcd_capture(spec: &MappingSpec, etcd: &[IpAddr]) -> Result<(), String> {
    let touches = |addr: &IpAddr| match spec {
        MappingSpec::Address { virtual_addr, real_addr } => addr == virtual_addr || addr == real_addr,
        MappingSpec::Ports(ports) => *addr == ports.virtual_addr || *addr == ports.real_addr,
        MappingSpec::Prefix(prefix) => prefix.virtual_prefix().contains(*addr) || prefix.real_prefix().contains(*addr),
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
pub(super) fn release_freed_memory() {
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it is
    // safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(super) fn empty_config() -> Config {
    let table = DesiredTable::new(Capacity::of_table(DEFAULT_MAX_MAPPINGS));
    Config { max_mappings: None, interfaces: Vec::new(), table, fleet: None, bounce: None, gate: None }
}

/// The fleet's state as the agent records it for `rewrite status` (its `agent.fleet`).
#[derive(Debug, serde::Serialize)]
struct FleetRecord {
    connected: bool,
    stale: bool,
    revision: i64,
    mappings: usize,
}

pub(super) fn log_applied(prepared: &apply::Prepared, reason: &str, source: &str, started: Instant) {
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
    for line in prepared.bounce.iter().flat_map(BouncePlan::lines) {
        tracing::info!(change = %line, "bounce");
    }
    for line in prepared.gate.iter().flat_map(GatePlan::lines) {
        tracing::info!(change = %line, "gate");
    }
}
impl Dataplane {
    pub(super) fn new(pins: Arc<PinLayout>, config_path: Option<PathBuf>, status: Arc<Mutex<ApplyStatus>>) -> Self {
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
            zone: None,
            status,
        }
    }

    pub(super) fn follow_fleet(&mut self, registers: bool, endpoints: &[String], zone: Option<String>) {
        self.following = true;
        self.zone = zone;
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
    pub(super) fn record_fleet_status(&self) {
        let Ok(status) = self.status.lock() else { return };
        let Some(fleet) = &status.fleet else { return };
        let record = FleetRecord {
            connected: fleet.connected,
            stale: fleet.stale,
            revision: fleet.revision,
            mappings: fleet.mappings,
        };
        let path = fleet_record(&self.pins);
        let text = serde_json::to_string(&record).unwrap_or_default();
        if let Err(error) = std::fs::write(&path, text) {
            tracing::debug!(path = %path.display(), %error, "cannot record the fleet state");
        }
    }

    pub(super) fn fleet_status(&self, change: impl FnOnce(&mut FleetStatus)) {
        if let Ok(mut status) = self.status.lock() {
            change(status.fleet.get_or_insert_with(FleetStatus::default));
        }
    }

    /// Whether an interface of the config exists but runs none of the programs its pins
    /// name (it was deleted and created again): the next apply attaches it again.
    pub(super) fn an_interface_came_back(&self) -> bool {
        let Some(config) = &self.local else { return false };
        config.interfaces.iter().any(|interface| {
            iface::index(&interface.name).is_ok() && matches!(staleness(&self.pins, &interface.name), Ok(Some(_)))
        })
    }

    /// Fleet changes wait for the first valid config, when there is a config file:
    /// before it, a full sync would take the local mappings out of the maps.
    pub(super) fn ready_for_fleet(&self) -> bool {
        self.config_path.is_none() || self.local.is_some()
    }

    /// Loads, checks and applies the config (with the fleet table as last known),
    /// logging what changed and recording the result for the metrics.
    pub(super) fn apply_config(&mut self, reason: &str) {
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
    pub(super) fn sync(&mut self, local: &Config) -> Result<apply::Prepared, Error> {
        let _writing = WriteLock::take(&self.pins, "rewrite agent", WAIT)?;
        let capacity = if self.pins.maps_dir().exists() {
            MappingTable::open(&self.pins)?.capacity()
        } else {
            local.max_mappings.unwrap_or(DEFAULT_MAX_MAPPINGS)
        };
        // The local mappings were admitted when the config was read; the fleet's join
        // them, against the live table's capacity.
        let mut desired = local.table.clone();
        desired.set_capacity(Capacity::of_table(capacity)).map_err(|overflow| Error::ApplyRefused {
            what: "cannot apply",
            mapping: "the config's mappings".into(),
            why: overflow.to_string(),
        })?;
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
        let config = Config { table: desired, fleet: None, ..local.clone() };
        let origin = self.config_path.clone().unwrap_or_else(|| PathBuf::from("the fleet table"));
        // Without a fresh copy of the fleet table (etcd unreachable since the start),
        // a mapping the maps hold beyond the local config may be the fleet's: it stays
        // until the table says otherwise. Only what the previous local config had goes.
        let previous_local: BTreeSet<MappingKey> = if self.following && self.fleet.is_none() {
            self.local.iter().flat_map(|config| config.table.specs().map(|spec| spec.key())).collect()
        } else {
            BTreeSet::new()
        };
        let keep_fleet_state = self.following && self.fleet.is_none();
        let prepared = apply::prepare_keeping(&self.pins, &origin, &config, |spec| {
            keep_fleet_state && !previous_local.contains(&spec.key())
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
        self.desired = Some(config.table);
        self.publish_fleet_counts();
        Ok(prepared)
    }
}
