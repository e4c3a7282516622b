//! What a config's `[bounce]` section changes on this host, resolved and compared with
//! the live services before anything is written, and applied.

use std::collections::{HashMap, HashSet};

use crate::{
    Error,
    bounce::{BounceTable, Protocol, ResolvedService, ServiceSpec, config::BounceConfig, enable::enable_bounce},
    dataplane::{objects::bounce_enabled, pins::PinLayout},
};

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
pub(crate) fn plan_bounce(pins: &PinLayout, bounce: &BounceConfig, gate_in_config: bool) -> Result<BouncePlan, Error> {
    let live: HashMap<_, _> = if bounce_enabled(pins) {
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
pub(crate) fn apply_bounce(pins: &PinLayout, plan: &BouncePlan) -> Result<(), Error> {
    if !bounce_enabled(pins) {
        if plan.added.is_empty() {
            return Ok(());
        }
        enable_bounce(pins, plan.max_flows)?;
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
