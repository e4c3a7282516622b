//! `apply`: making the dataplane equal to a config, whole. Everything is worked out
//! against the live state first ([`prepare`]: interfaces to attach, the mapping plan
//! rehearsed on a model of the live table, the bounce and gate plans), and only then
//! written ([`execute`]), so a config that cannot be applied changes nothing.

use std::path::Path;

use rewrite_common::spec::MappingSpec;

use crate::{
    Error,
    bounce::{
        self,
        plan::{BouncePlan, apply_bounce, plan_bounce},
    },
    config::{Config, ConfigError, InterfaceConfig},
    dataplane::{attach, iface, pins::PinLayout, status, tc::TcAttach},
    gate::{self, ClientPorts},
    located::Problem,
    table::{
        admission::Capacity,
        listing::Listing,
        live::MappingTable,
        plan::{Plan, apply, plan_keeping},
    },
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
pub fn prepare(pins: &PinLayout, path: &Path, config: &Config) -> Result<Prepared, Error> {
    prepare_keeping(pins, path, config, |_| false)
}

/// [`prepare`], but live mappings for which `keep` says so stay even when `config`
/// does not have them (an agent without a fresh copy of the fleet table keeps the
/// fleet's last state). The plan is rehearsed with them in place.
pub fn prepare_keeping(
    pins: &PinLayout,
    path: &Path,
    config: &Config,
    keep: impl Fn(&MappingSpec) -> bool,
) -> Result<Prepared, Error> {
    for interface in &config.interfaces {
        iface::ensure_ethernet(&interface.name)?;
    }
    let attached: Vec<String> = status::attached(pins)?.into_iter().map(|attachment| attachment.iface).collect();
    // An interface whose pins are stale (it was deleted, or deleted and created again)
    // is attached again: its programs are gone.
    let mut live = Vec::new();
    for name in &attached {
        if status::staleness(pins, name)?.is_none() {
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
    let plan = plan_keeping(&listing, &config.table, keep)?;
    if let Some(capacity) = capacity {
        // The config was admitted against its own capacity; the live table's may be
        // smaller. A retarget holds the old and the new reverse entry for a moment.
        let room = if plan.needs_spare_slot() { capacity.saturating_sub(1) } else { capacity };
        if let Err(overflow) = config.table.fits(Capacity::of_table(room)) {
            let message = format!("{overflow} (the live table's capacity)");
            let problems = vec![Problem { line: 1, column: 1, message }];
            return Err(Error::Config(ConfigError::Invalid { path: path.to_owned(), problems }));
        }
    }
    let bounce = config.bounce.as_ref().map(|bounce| plan_bounce(pins, bounce, config.gate.is_some())).transpose()?;
    let gate = match &config.gate {
        Some(gate) => {
            // With a [bounce] section, its services are the ones the gate must leave open.
            let bounce_ranges = match &config.bounce {
                Some(bounce) => bounce.source_port_ranges(),
                None => bounce::source_port_ranges(pins)?,
            };
            let client = ClientPorts::of_host(bounce_ranges).map_err(Error::Gate)?;
            Some(gate::plan::plan(pins, gate, &client)?)
        }
        None => None,
    };
    Ok(Prepared { to_attach, unlisted, plan, bounce, gate, max_mappings: config.max_mappings })
}

/// Attaches the missing interfaces, then applies the mapping plan.
pub fn execute(pins: &PinLayout, prepared: &Prepared) -> Result<(), Error> {
    for interface in &prepared.to_attach {
        attach::attach(pins, &interface.name, interface.ingress, TcAttach::Auto, prepared.max_mappings)?;
    }
    if !pins.maps_dir().exists() {
        attach::create_table(pins, prepared.max_mappings)?;
    }
    apply(&mut MappingTable::open(pins)?, &prepared.plan)?;
    if let Some(bounce) = &prepared.bounce {
        apply_bounce(pins, bounce)?;
    }
    if let Some(gate) = &prepared.gate {
        gate::plan::apply(pins, gate)?;
    }
    Ok(())
}
