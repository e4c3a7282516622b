//! Making the live table equal to a config: the difference (added, removed, changed),
//! an order of map writes in which no packet ever sees half a mapping, and a dry run of
//! that order on the table model before any map is touched.
//!
//! The guarantee, per mapping: a reverse entry (REAL -> VIRTUAL) is written before its
//! forward entry and removed after it, so a packet sent to REAL always has its reply
//! restored. An address mapping that changes REAL is retargeted in place (new reverse
//! entry, forward entry swapped, old reverse entry removed): its packets never see it
//! absent. A port range or prefix that changes is removed and then added again: between
//! the two writes its packets see no mapping (never half of one). Removals come first,
//! then changes, then additions, so a REAL freed by one mapping can be taken by another.
//! The config as a whole is not switched atomically: while it is applied, a packet may
//! meet some mappings old and some new.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use rewrite_common::{mapping::PrefixMapping, model::ModelTable, spec::MappingSpec, validate::AddPlan};

use crate::{
    Error,
    bounce::{BounceTable, Protocol, ResolvedService, ServiceSpec},
    config::{self, BounceConfig, Config, ConfigError, ConfigMapping, InterfaceConfig, written},
    desired::{Change, add_to_model, last_port, remove_from_model},
    iface, loader,
    maps::{Listing, Mapping, MappingTable, merge_port_runs},
    pins::PinLayout,
};

/// What applying a config will do, checked against the live state.
#[derive(Debug)]
pub struct Prepared {
    /// Interfaces the config names that are not attached yet.
    pub to_attach: Vec<InterfaceConfig>,
    /// Attached interfaces the config does not name: left as they are.
    pub unlisted: Vec<String>,
    pub plan: Plan,
    /// What the config's `[bounce]` section changes; `None` without one.
    pub bounce: Option<BouncePlan>,
    /// What the config's `[gate]` section changes; `None` without one.
    pub gate: Option<crate::gate::GatePlan>,
    max_mappings: Option<u32>,
}

/// Checks `config` (read from `path`) against the live state and works out what
/// applying it does. Changes nothing.
pub fn prepare(pins: &PinLayout, path: &std::path::Path, config: &Config) -> Result<Prepared, Error> {
    prepare_keeping(pins, path, config, |_| false)
}

/// [`prepare`], but live mappings for which `keep` says so stay even when `config`
/// does not have them (an agent without a fresh copy of the fleet table keeps the
/// fleet's last state). The plan is rehearsed with them in place.
pub fn prepare_keeping(
    pins: &PinLayout,
    path: &std::path::Path,
    config: &Config,
    keep: impl Fn(&MappingSpec) -> bool,
) -> Result<Prepared, Error> {
    for interface in &config.interfaces {
        iface::ensure_ethernet(&interface.name)?;
    }
    let attached: Vec<String> = loader::attached(pins)?.into_iter().map(|attachment| attachment.iface).collect();
    // An interface whose pins are stale (it was deleted, or deleted and created again)
    // is attached again: its programs are gone.
    let mut live = Vec::new();
    for name in &attached {
        if loader::staleness(pins, name)?.is_none() {
            live.push(name.clone());
        }
    }
    let to_attach = config.interfaces.iter().filter(|interface| !live.contains(&interface.name)).cloned().collect();
    let unlisted = attached
        .into_iter()
        .filter(|name| !config.interfaces.iter().any(|interface| &interface.name == name))
        .collect();
    let (listing, capacity) = if pins.maps_dir().exists() {
        let table = MappingTable::open(pins)?;
        (table.list()?, Some(table.capacity()))
    } else {
        (Listing::default(), None)
    };
    let plan = plan_keeping(&listing, &config.mappings, keep)?;
    if let Some(capacity) = capacity {
        // A retarget holds the old and the new reverse entry for a moment.
        let room = if plan.needs_spare_slot() { capacity.saturating_sub(1) } else { capacity };
        config::check_capacity(&config.mappings, room, "the live table's capacity").map_err(|problem| {
            Error::Config(ConfigError::Invalid { path: path.to_owned(), problems: vec![problem] })
        })?;
    }
    let bounce = config.bounce.as_ref().map(|bounce| plan_bounce(pins, bounce, config.gate.is_some())).transpose()?;
    let gate = match &config.gate {
        Some(gate) => {
            let mut client = crate::gate::ClientPorts::of_host(pins)?;
            // With a [bounce] section, its services are the ones the gate must leave open.
            if let Some(bounce) = &config.bounce {
                client.bounce = bounce
                    .services
                    .iter()
                    .map(|service| (service.protocol.number(), service.ports.0..=service.ports.1))
                    .collect();
            }
            Some(crate::gate::plan(pins, gate, &client)?)
        }
        None => None,
    };
    Ok(Prepared { to_attach, unlisted, plan, bounce, gate, max_mappings: config.max_mappings })
}

/// Attaches the missing interfaces, then applies the mapping plan.
pub fn execute(pins: &PinLayout, prepared: &Prepared) -> Result<(), Error> {
    for interface in &prepared.to_attach {
        loader::attach(pins, &interface.name, interface.ingress, crate::tc::TcAttach::Auto, prepared.max_mappings)?;
    }
    if !pins.maps_dir().exists() {
        loader::create_table(pins, prepared.max_mappings)?;
    }
    apply(&mut MappingTable::open(pins)?, &prepared.plan)?;
    if let Some(bounce) = &prepared.bounce {
        apply_bounce(pins, bounce)?;
    }
    if let Some(gate) = &prepared.gate {
        crate::gate::apply(pins, gate)?;
    }
    Ok(())
}

/// What a `[bounce]` section changes: services removed, then added or changed, and the
/// idle timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BouncePlan {
    max_flows: Option<u32>,
    timeouts: crate::bounce::Timeouts,
    /// LISTEN endpoints the config no longer has.
    pub removed: Vec<(std::net::SocketAddr, Protocol)>,
    /// Services to write: new ones, and those whose target, source or ports differ.
    pub added: Vec<(ServiceSpec, ResolvedService)>,
    pub changed: Vec<(ServiceSpec, ResolvedService)>,
}

impl BouncePlan {
    /// One line per change, as `Plan::lines` for mappings.
    pub fn lines(&self) -> Vec<String> {
        let service = |spec: &ServiceSpec| format!("bounce {}/{} -> {}", spec.listen, spec.protocol, spec.target);
        let removed = self.removed.iter().map(|(listen, protocol)| format!("removed bounce {listen}/{protocol}"));
        let changed = self.changed.iter().map(|(spec, _)| format!("changed {}", service(spec)));
        let added = self.added.iter().map(|(spec, _)| format!("added {}", service(spec)));
        removed.chain(changed).chain(added).collect()
    }
}

/// Resolves every service of `bounce` against this host (routes, forwarding) and
/// compares them with the live ones. Changes nothing; a service that cannot be
/// resolved refuses the whole config.
fn plan_bounce(pins: &PinLayout, bounce: &BounceConfig, gate_in_config: bool) -> Result<BouncePlan, Error> {
    let live: HashMap<_, _> = if loader::bounce_enabled(pins) {
        let table = BounceTable::open(pins)?;
        if let Some(requested) = bounce.max_flows {
            let existing = table.capacity_flows();
            if existing != requested {
                return Err(Error::FlowCapacityMismatch { existing, requested });
            }
        }
        table.services()?.into_iter().map(|service| (service.key, service)).collect()
    } else {
        HashMap::new()
    };
    let mut plan = BouncePlan {
        max_flows: bounce.max_flows,
        timeouts: bounce.timeouts,
        removed: Vec::new(),
        added: Vec::new(),
        changed: Vec::new(),
    };
    let mut wanted = HashSet::new();
    for spec in &bounce.services {
        let resolved = spec.resolve().map_err(|error| Error::ApplyRefused {
            what: "cannot bounce",
            mapping: format!("{}/{} -> {}", spec.listen, spec.protocol, spec.target),
            why: error.to_string(),
        })?;
        // A [gate] section in the same config is planned around the services; without
        // one, the live gate must leave their ports open.
        if !gate_in_config {
            crate::bounce::check_gate_leaves_open(pins, &resolved)?;
        }
        wanted.insert(resolved.key);
        match live.get(&resolved.key) {
            None => plan.added.push((spec.clone(), resolved)),
            Some(existing) if *existing != resolved => plan.changed.push((spec.clone(), resolved)),
            Some(_) => {}
        }
    }
    for key in live.keys().filter(|key| !wanted.contains(*key)) {
        if let Some(listen) = crate::bounce::listen_of(key) {
            plan.removed.push(listen);
        }
    }
    plan.removed.sort();
    Ok(plan)
}

/// Applies a bounce plan: starts bounce mode if the config has services and it is not
/// running yet, then sets the timeouts, removes, and writes.
fn apply_bounce(pins: &PinLayout, plan: &BouncePlan) -> Result<(), Error> {
    if !loader::bounce_enabled(pins) {
        if plan.added.is_empty() {
            return Ok(());
        }
        loader::enable_bounce(pins, plan.max_flows)?;
    }
    let mut table = BounceTable::open(pins)?;
    let timeouts = plan.timeouts;
    table.set_timeouts(Some(timeouts.udp), Some(timeouts.tcp), Some(timeouts.unreplied))?;
    for (listen, protocol) in &plan.removed {
        table.remove(*listen, *protocol)?;
    }
    for (_, resolved) in plan.changed.iter().chain(&plan.added) {
        table.add(resolved)?;
    }
    Ok(())
}

/// What applying a config changes, in the order it is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Half-applied reverse entries left by an interrupted command: (VIRTUAL, REAL).
    pub orphans: Vec<(IpAddr, IpAddr)>,
    pub removed: Vec<MappingSpec>,
    /// (live, config): the same VIRTUAL, another REAL.
    pub changed: Vec<(MappingSpec, MappingSpec)>,
    pub added: Vec<MappingSpec>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.orphans.is_empty() && self.removed.is_empty() && self.changed.is_empty() && self.added.is_empty()
    }

    /// One line per change: `added V -> R`, `removed V -> R`, `changed V -> R (was R0)`.
    pub fn lines(&self) -> Vec<String> {
        let arrow = |spec: &MappingSpec| {
            let (virtual_side, real_side) = written(spec);
            format!("{virtual_side} -> {real_side}")
        };
        let orphans = self
            .orphans
            .iter()
            .map(|(virtual_addr, real_addr)| format!("removed half-applied {real_addr} -> {virtual_addr}"));
        let removed = self.removed.iter().map(|spec| format!("removed {}", arrow(spec)));
        let changed =
            self.changed.iter().map(|(live, config)| format!("changed {} (was {})", arrow(config), written(live).1));
        let added = self.added.iter().map(|spec| format!("added {}", arrow(spec)));
        orphans.chain(removed).chain(changed).chain(added).collect()
    }

    /// How many entries the table needs at most while the plan is applied, per map:
    /// the config's own, plus one for an address retarget's second reverse entry.
    pub fn needs_spare_slot(&self) -> bool {
        self.changed.iter().any(|(live, _)| matches!(live, MappingSpec::Address { .. }))
    }
}

/// The live table and the config, each in canonical form: port ranges split into
/// ports and consecutive ports merged again, as `map list` shows them.
fn canonical(mappings: impl IntoIterator<Item = MappingSpec>) -> Vec<MappingSpec> {
    let mut others = Vec::new();
    let mut ports = Vec::new();
    for spec in mappings {
        match spec {
            MappingSpec::Ports(mapping) => ports.push(mapping),
            other => others.push(other),
        }
    }
    others.extend(merge_port_runs(ports).into_iter().map(MappingSpec::Ports));
    others
}

pub fn live_specs(listing: &Listing) -> Vec<MappingSpec> {
    let addresses = listing
        .mappings
        .iter()
        .map(|mapping| MappingSpec::Address { virtual_addr: mapping.virtual_addr, real_addr: mapping.real_addr });
    let prefixes = listing.prefixes.iter().copied().map(MappingSpec::Prefix);
    let ports = listing.port_mappings.iter().copied().map(MappingSpec::Ports);
    addresses.chain(prefixes).chain(ports).collect()
}

/// What identifies a mapping's VIRTUAL side, for pairing live and config mappings.
fn virtual_side(spec: &MappingSpec) -> String {
    written(spec).0
}

/// The difference between the live table and `config`, checked by applying it, in
/// order, to a model of the live table: if any step would be refused, nothing is done
/// and the error says which mapping.
pub fn plan(listing: &Listing, config: &[ConfigMapping]) -> Result<Plan, Error> {
    plan_keeping(listing, config, |_| false)
}

/// [`plan`], leaving live mappings that `keep` names where they are.
fn plan_keeping(
    listing: &Listing,
    config: &[ConfigMapping],
    keep: impl Fn(&MappingSpec) -> bool,
) -> Result<Plan, Error> {
    let live = canonical(live_specs(listing));
    let wanted = canonical(config.iter().map(|mapping| mapping.spec));
    let mut plan = Plan {
        orphans: listing.orphans.iter().map(|orphan| (orphan.virtual_addr, orphan.real_addr)).collect(),
        ..Plan::default()
    };
    let wanted_by_virtual: HashMap<String, &MappingSpec> =
        wanted.iter().map(|spec| (virtual_side(spec), spec)).collect();
    let mut live_virtuals = HashSet::new();
    for spec in &live {
        let key = virtual_side(spec);
        match wanted_by_virtual.get(&key) {
            Some(other) if *other == spec => {}
            Some(other) => plan.changed.push((*spec, **other)),
            None if keep(spec) => {}
            None => plan.removed.push(*spec),
        }
        live_virtuals.insert(key);
    }
    plan.added = wanted.iter().filter(|spec| !live_virtuals.contains(&virtual_side(spec))).copied().collect();
    rehearse(&live, &plan)?;
    Ok(plan)
}

/// Runs `plan` on a model of the live table, in the order [`apply`] follows.
fn rehearse(live: &[MappingSpec], plan: &Plan) -> Result<(), Error> {
    let mut model = ModelTable::default();
    for spec in live {
        add_to_model(&mut model, spec)
            .map_err(|error| refused("the live table does not load into the model", spec, &error))?;
    }
    for spec in &plan.removed {
        remove_from_model(&mut model, spec);
    }
    for (live_spec, config_spec) in &plan.changed {
        if !matches!(live_spec, MappingSpec::Address { .. }) {
            remove_from_model(&mut model, live_spec);
        }
        add_to_model(&mut model, config_spec).map_err(|error| refused("cannot change", config_spec, &error))?;
    }
    for spec in &plan.added {
        add_to_model(&mut model, spec).map_err(|error| refused("cannot add", spec, &error))?;
    }
    Ok(())
}

fn refused(what: &'static str, spec: &MappingSpec, error: &dyn std::fmt::Display) -> Error {
    let (virtual_side, real_side) = written(spec);
    Error::ApplyRefused { what, mapping: format!("{virtual_side} -> {real_side}"), why: error.to_string() }
}

/// Applies `plan` to the live table in the order documented above. Each write is one
/// of the table's own operations, which keep the reverse-first order per mapping.
pub fn apply(table: &mut MappingTable, plan: &Plan) -> Result<(), Error> {
    for (virtual_addr, _) in &plan.orphans {
        table.remove_mapping(*virtual_addr)?;
    }
    // Address mappings removed in batches (forward entries first, then reverse); the
    // few port ranges and prefixes one by one.
    let removed_addresses: Vec<Mapping> = plan.removed.iter().filter_map(address_mapping).collect();
    table.remove_batch(&removed_addresses)?;
    for spec in plan.removed.iter().filter(|spec| address_mapping(spec).is_none()) {
        remove(table, spec)?;
    }
    for (live_spec, config_spec) in &plan.changed {
        match (live_spec, config_spec) {
            // An address mapping is retargeted in place.
            (MappingSpec::Address { real_addr: old_real, .. }, MappingSpec::Address { virtual_addr, real_addr }) => {
                table.add_planned(*virtual_addr, *real_addr, AddPlan::Replace { old_real: *old_real })?;
            }
            // A range or a prefix goes and comes back.
            _ => {
                remove(table, live_spec)?;
                add(table, config_spec)?;
            }
        }
    }
    let added_addresses: Vec<Mapping> = plan.added.iter().filter_map(address_mapping).collect();
    table.insert_new_many(&added_addresses)?;
    for spec in plan.added.iter().filter(|spec| address_mapping(spec).is_none()) {
        add(table, spec)?;
    }
    Ok(())
}

/// Applies one admitted change (see [`crate::desired`]) with the same per-mapping
/// order as a whole plan.
pub fn apply_change(table: &mut MappingTable, change: &Change) -> Result<(), Error> {
    let plan = match *change {
        Change::Unchanged => return Ok(()),
        Change::Added(spec) => Plan { added: vec![spec], ..Plan::default() },
        Change::Changed { old, new } => Plan { changed: vec![(old, new)], ..Plan::default() },
        Change::Removed(spec) => Plan { removed: vec![spec], ..Plan::default() },
    };
    apply(table, &plan)
}

fn address_mapping(spec: &MappingSpec) -> Option<Mapping> {
    match spec {
        MappingSpec::Address { virtual_addr, real_addr } => {
            Some(Mapping { virtual_addr: *virtual_addr, real_addr: *real_addr })
        }
        _ => None,
    }
}

fn add(table: &mut MappingTable, spec: &MappingSpec) -> Result<(), Error> {
    match spec {
        // Checked on the model already (see `rehearse`): no per-mapping table scan.
        MappingSpec::Address { virtual_addr, real_addr } => {
            table.add_planned(*virtual_addr, *real_addr, AddPlan::Insert).map(drop)
        }
        MappingSpec::Ports(mapping) => table.add_ports(mapping).map(drop),
        MappingSpec::Prefix(mapping) => table.add_prefix(mapping).map(drop),
    }
}

fn remove(table: &mut MappingTable, spec: &MappingSpec) -> Result<(), Error> {
    match spec {
        MappingSpec::Address { virtual_addr, .. } => table.remove_mapping(*virtual_addr).map(drop),
        MappingSpec::Ports(mapping) => table
            .remove_ports(mapping.protocol, mapping.virtual_addr, mapping.virtual_first, last_port(mapping))
            .map(drop),
        MappingSpec::Prefix(PrefixMapping { virtual_net, len, .. }) => {
            table.remove_prefix(*virtual_net, *len).map(drop)
        }
    }
}
