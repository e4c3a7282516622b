//! Making the live table equal to a desired one: the difference (added, removed,
//! changed), rehearsed on a model of the live table in the order it is written (so a
//! plan the table would refuse half-way is refused before anything is written), and
//! written in an order in which no packet ever sees half a mapping.
//!
//! The guarantee, per mapping: a reverse entry (REAL -> VIRTUAL) is written before its
//! forward entry and removed after it, so a packet sent to REAL always has its reply
//! restored. An address mapping that changes REAL is retargeted in place (new reverse
//! entry, forward entry swapped, old reverse entry removed): its packets never see it
//! absent. A port range or prefix that changes is removed and then added again: between
//! the two writes its packets see no mapping (never half of one). Removals come first,
//! then changes, then additions, so a REAL freed by one mapping can be taken by another.
//! The table as a whole is not switched atomically: while a plan is written, a packet
//! may meet some mappings old and some new.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use rewrite_common::{
    mapping::AddressMapping,
    model::ModelTable,
    spec::{MappingKey, MappingSpec},
    validate::AddPlan,
};

use crate::{
    Error,
    table::{
        admission::{Change, DesiredTable},
        listing::{Listing, merge_port_runs},
        live::MappingTable,
    },
};

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
        let orphans = self
            .orphans
            .iter()
            .map(|(virtual_addr, real_addr)| format!("removed half-applied {real_addr} -> {virtual_addr}"));
        let removed = self.removed.iter().map(|spec| format!("removed {spec}"));
        let changed = self.changed.iter().map(|(live, wanted)| format!("changed {wanted} (was {})", live.real_side()));
        let added = self.added.iter().map(|spec| format!("added {spec}"));
        orphans.chain(removed).chain(changed).chain(added).collect()
    }

    /// How many entries the table needs at most while the plan is applied, per map:
    /// the config's own, plus one for an address retarget's second reverse entry.
    pub fn needs_spare_slot(&self) -> bool {
        self.changed.iter().any(|(live, _)| matches!(live, MappingSpec::Address { .. }))
    }
}

/// The live table and the desired one, each in canonical form: port ranges split into
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

/// The difference between the live table and the `desired` one, checked by applying
/// it, in order, to a model of the live table: if any step would be refused, nothing is
/// done and the error says which mapping.
pub fn plan(listing: &Listing, desired: &DesiredTable) -> Result<Plan, Error> {
    plan_keeping(listing, desired, |_| false)
}

/// [`plan`], leaving live mappings that `keep` names where they are.
pub fn plan_keeping(
    listing: &Listing,
    desired: &DesiredTable,
    keep: impl Fn(&MappingSpec) -> bool,
) -> Result<Plan, Error> {
    let live = canonical(live_specs(listing));
    let wanted = canonical(desired.specs());
    let mut plan = Plan {
        orphans: listing.orphans.iter().map(|orphan| (orphan.virtual_addr, orphan.real_addr)).collect(),
        ..Plan::default()
    };
    let wanted_by_key: HashMap<MappingKey, &MappingSpec> = wanted.iter().map(|spec| (spec.key(), spec)).collect();
    let mut live_keys = HashSet::new();
    for spec in &live {
        let key = spec.key();
        match wanted_by_key.get(&key) {
            Some(other) if *other == spec => {}
            Some(other) => plan.changed.push((*spec, **other)),
            None if keep(spec) => {}
            None => plan.removed.push(*spec),
        }
        live_keys.insert(key);
    }
    plan.added = wanted.iter().filter(|spec| !live_keys.contains(&spec.key())).copied().collect();
    rehearse(&live, &plan)?;
    Ok(plan)
}

/// Runs `plan` on a model of the live table, in the order [`apply`] follows.
fn rehearse(live: &[MappingSpec], plan: &Plan) -> Result<(), Error> {
    let mut model = ModelTable::default();
    for spec in live {
        model.add_spec(spec).map_err(|error| refused("the live table does not load into the model", spec, &error))?;
    }
    for spec in &plan.removed {
        model.remove_spec(spec);
    }
    for (live_spec, wanted) in &plan.changed {
        if !matches!(live_spec, MappingSpec::Address { .. }) {
            model.remove_spec(live_spec);
        }
        model.add_spec(wanted).map_err(|error| refused("cannot change", wanted, &error))?;
    }
    for spec in &plan.added {
        model.add_spec(spec).map_err(|error| refused("cannot add", spec, &error))?;
    }
    Ok(())
}

fn refused(what: &'static str, spec: &MappingSpec, error: &dyn std::fmt::Display) -> Error {
    Error::ApplyRefused { what, mapping: spec.to_string(), why: error.to_string() }
}

/// Writes `plan` to the live table in the order documented above, without checking
/// the mappings again (the plan was rehearsed). Each write is one of the table's own
/// operations, which keep the reverse-first order per mapping.
pub fn apply(table: &mut MappingTable, plan: &Plan) -> Result<(), Error> {
    for (virtual_addr, _) in &plan.orphans {
        table.remove_mapping(*virtual_addr)?;
    }
    // Address mappings removed in batches (forward entries first, then reverse); the
    // few port ranges and prefixes one by one.
    let removed_addresses: Vec<AddressMapping> = plan.removed.iter().filter_map(address_mapping).collect();
    table.remove_batch(&removed_addresses)?;
    for spec in plan.removed.iter().filter(|spec| address_mapping(spec).is_none()) {
        table.remove(spec)?;
    }
    for (live_spec, wanted) in &plan.changed {
        match (live_spec, wanted) {
            // An address mapping is retargeted in place.
            (MappingSpec::Address { real_addr: old_real, .. }, MappingSpec::Address { virtual_addr, real_addr }) => {
                table.add_planned(*virtual_addr, *real_addr, AddPlan::Replace { old_real: *old_real })?;
            }
            // A range or a prefix goes and comes back.
            _ => {
                table.remove(live_spec)?;
                table.write(wanted, AddPlan::Insert)?;
            }
        }
    }
    let added_addresses: Vec<AddressMapping> = plan.added.iter().filter_map(address_mapping).collect();
    table.insert_new_many(&added_addresses)?;
    // Checked on the model already (see `rehearse`): written without a table scan.
    for spec in plan.added.iter().filter(|spec| address_mapping(spec).is_none()) {
        table.write(spec, AddPlan::Insert)?;
    }
    Ok(())
}

/// Applies one admitted change (see [`crate::table::admission`]) with the same per-mapping
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

fn address_mapping(spec: &MappingSpec) -> Option<AddressMapping> {
    match spec {
        MappingSpec::Address { virtual_addr, real_addr } => {
            Some(AddressMapping { virtual_addr: *virtual_addr, real_addr: *real_addr })
        }
        _ => None,
    }
}
