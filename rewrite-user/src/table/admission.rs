//! The table an agent keeps the maps equal to: the local config's mappings and the
//! fleet's, checked together against the live table's rules, one mapping at a time.
//!
//! The config file is checked as a whole when it is read. A fleet table changes one key
//! at a time, and can hold a mapping that conflicts with another (two writers racing,
//! or a key written by hand with etcdctl). A refused mapping must not stop the rest of
//! the fleet from syncing, so every mapping is admitted here, in order, on a model of
//! the table: what fits is kept and what does not is refused with the reason, and the
//! agent writes only admitted mappings to the maps. Each admission also says what the
//! maps must do (add, change, remove), so that a single fleet change costs a few map
//! writes, not a diff of the whole table.

use std::collections::{BTreeMap, HashMap};

use rewrite_common::{
    mapping::PortMapping, maps::MAX_PREFIX_MAPPINGS, model::ModelTable, spec::MappingSpec, validate::MappingConflict,
};

use crate::config::{ConfigMapping, VirtualKey, virtual_keys, written};

/// Where a mapping comes from. A local mapping wins over a fleet mapping of the same
/// VIRTUAL: the node's own config is the operator's explicit word for this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Local,
    Fleet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Admitted {
    spec: MappingSpec,
    label: Option<String>,
    source: Source,
}

/// What the maps must do for one admitted change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Added(MappingSpec),
    /// The same VIRTUAL, another REAL (or another range width).
    Changed {
        old: MappingSpec,
        new: MappingSpec,
    },
    Removed(MappingSpec),
}

/// Why a mapping was not admitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("VIRTUAL {key} is mapped by the local config, which wins over the fleet table")]
    LocalWins { key: String },
    #[error("VIRTUAL {key} overlaps the mapping of {other}")]
    Overlaps { key: String, other: String },
    #[error("{key}: {conflict}")]
    Conflict { key: String, conflict: MappingConflict },
    #[error("{key}: the {table} table is full ({capacity} entries)")]
    Full { key: String, table: &'static str, capacity: u64 },
}

/// Entries each map holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub addresses: u64,
    pub ports: u64,
    pub prefixes: u64,
}

impl Capacity {
    pub fn of_table(max_mappings: u32) -> Self {
        Self {
            addresses: u64::from(max_mappings),
            ports: u64::from(max_mappings),
            prefixes: u64::from(MAX_PREFIX_MAPPINGS),
        }
    }
}

/// Entries a mapping takes in each map: (addresses, ports, prefixes).
fn footprint(spec: &MappingSpec) -> (u64, u64, u64) {
    match spec {
        MappingSpec::Address { .. } => (1, 0, 0),
        MappingSpec::Ports(ports) => (0, u64::from(ports.count), 0),
        MappingSpec::Prefix(_) => (0, 0, 1),
    }
}

/// Whether `spec` sends packets to this host (its REAL is one of `local`, or a REAL
/// prefix holds one of them). A fleet table lists every node, this one too; on this
/// node such a mapping would restore every packet sent to the host's own address to the
/// VIRTUAL, breaking each connection the host opened from that address (its link to
/// etcd first). So a node applies the mappings of the others only.
pub fn is_own(spec: &MappingSpec, local: &[std::net::IpAddr]) -> bool {
    match spec {
        MappingSpec::Address { real_addr, .. } => local.contains(real_addr),
        MappingSpec::Ports(ports) => local.contains(&ports.real_addr),
        MappingSpec::Prefix(prefix) => {
            local.iter().any(|addr| rewrite_common::validate::in_prefix(*addr, prefix.real_net, prefix.len))
        }
    }
}

/// The key a mapping is known by: its VIRTUAL side as `map add` writes it.
pub fn key_of(spec: &MappingSpec) -> String {
    written(spec).0
}

#[derive(Debug)]
pub struct DesiredTable {
    model: ModelTable,
    admitted: BTreeMap<String, Admitted>,
    /// Which admitted mapping holds each VIRTUAL address, port or prefix.
    owners: HashMap<VirtualKey, String>,
    capacity: Capacity,
    used: (u64, u64, u64),
}

impl DesiredTable {
    pub fn new(capacity: Capacity) -> Self {
        Self {
            model: ModelTable::default(),
            admitted: BTreeMap::new(),
            owners: HashMap::new(),
            capacity,
            used: (0, 0, 0),
        }
    }

    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.admitted.contains_key(key)
    }

    /// The spec admitted under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&MappingSpec> {
        self.admitted.get(key).map(|admitted| &admitted.spec)
    }

    /// The admitted mappings, in key order, as a config's mappings.
    pub fn mappings(&self) -> Vec<ConfigMapping> {
        self.admitted
            .values()
            .map(|admitted| ConfigMapping { spec: admitted.spec, label: admitted.label.clone(), line: 0 })
            .collect()
    }

    /// Admits `spec` from `source`, replacing what `source` had under the same key, or
    /// says why not; a refusal leaves the table as it was.
    pub fn admit(&mut self, spec: MappingSpec, label: Option<String>, source: Source) -> Result<Change, Refusal> {
        let key = key_of(&spec);
        let old = self.admitted.get(&key).cloned();
        if let Some(old) = &old {
            if old.source == Source::Local && source == Source::Fleet {
                return Err(Refusal::LocalWins { key });
            }
            if old.spec == spec {
                self.admitted.insert(key, Admitted { spec, label, source });
                return Ok(Change::Unchanged);
            }
        }
        let claimed = virtual_keys(&spec);
        if let Some(other) = claimed.iter().find_map(|claim| self.owners.get(claim).filter(|owner| **owner != key)) {
            return Err(Refusal::Overlaps { key, other: other.clone() });
        }
        self.check_room(&key, old.as_ref().map(|old| &old.spec), &spec)?;
        self.model_replace(old.as_ref().map(|old| &old.spec), &spec)
            .map_err(|conflict| Refusal::Conflict { key: key.clone(), conflict })?;
        if let Some(old) = &old {
            for claim in virtual_keys(&old.spec) {
                self.owners.remove(&claim);
            }
            self.used = subtract(self.used, footprint(&old.spec));
        }
        self.owners.extend(claimed.into_iter().map(|claim| (claim, key.clone())));
        self.used = add(self.used, footprint(&spec));
        self.admitted.insert(key, Admitted { spec, label, source });
        Ok(match old {
            Some(old) => Change::Changed { old: old.spec, new: spec },
            None => Change::Added(spec),
        })
    }

    /// Removes the mapping `source` holds under `key` (a fleet removal does not remove
    /// a local mapping of the same VIRTUAL).
    pub fn remove(&mut self, key: &str, source: Source) -> Change {
        match self.admitted.get(key) {
            Some(admitted) if admitted.source == source => {}
            _ => return Change::Unchanged,
        }
        let Some(admitted) = self.admitted.remove(key) else { return Change::Unchanged };
        remove_from_model(&mut self.model, &admitted.spec);
        for claim in virtual_keys(&admitted.spec) {
            self.owners.remove(&claim);
        }
        self.used = subtract(self.used, footprint(&admitted.spec));
        Change::Removed(admitted.spec)
    }

    fn check_room(&self, key: &str, old: Option<&MappingSpec>, new: &MappingSpec) -> Result<(), Refusal> {
        let after = add(subtract(self.used, old.map(footprint).unwrap_or_default()), footprint(new));
        let limits = [
            (after.0, self.capacity.addresses, "address"),
            (after.1, self.capacity.ports, "port"),
            (after.2, self.capacity.prefixes, "prefix"),
        ];
        match limits.into_iter().find(|(used, capacity, _)| used > capacity) {
            Some((_, capacity, table)) => Err(Refusal::Full { key: key.to_owned(), table, capacity }),
            None => Ok(()),
        }
    }

    /// Puts `new` in the model in place of `old`; on a conflict the model is as before.
    fn model_replace(&mut self, old: Option<&MappingSpec>, new: &MappingSpec) -> Result<(), MappingConflict> {
        match (old, new) {
            // An address retarget: the model checks and releases the old REAL itself.
            (Some(MappingSpec::Address { .. }) | None, MappingSpec::Address { .. }) | (None, _) => {
                add_to_model(&mut self.model, new)
            }
            (Some(old), _) => {
                remove_from_model(&mut self.model, old);
                add_to_model(&mut self.model, new).inspect_err(|_| {
                    // It was in the model a moment ago, so it fits again.
                    let _ = add_to_model(&mut self.model, old);
                })
            }
        }
    }
}

fn add(a: (u64, u64, u64), b: (u64, u64, u64)) -> (u64, u64, u64) {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

fn subtract(a: (u64, u64, u64), b: (u64, u64, u64)) -> (u64, u64, u64) {
    (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1), a.2.saturating_sub(b.2))
}

pub(crate) fn add_to_model(model: &mut ModelTable, spec: &MappingSpec) -> Result<(), MappingConflict> {
    match spec {
        MappingSpec::Address { virtual_addr, real_addr } => model.add(*virtual_addr, *real_addr).map(drop),
        MappingSpec::Ports(mapping) => model.add_ports(mapping).map(drop),
        MappingSpec::Prefix(mapping) => model.add_prefix(mapping).map(drop),
    }
}

/// Removes `spec` from the model; what it removed does not matter here.
pub(crate) fn remove_from_model(model: &mut ModelTable, spec: &MappingSpec) {
    match spec {
        MappingSpec::Address { virtual_addr, .. } => {
            model.remove(*virtual_addr);
        }
        MappingSpec::Ports(mapping) => {
            model.remove_ports(mapping.protocol, mapping.virtual_addr, mapping.virtual_first, last_port(mapping));
        }
        MappingSpec::Prefix(mapping) => {
            model.remove_prefix(mapping.virtual_net, mapping.len);
        }
    }
}

pub(crate) fn last_port(mapping: &PortMapping) -> u16 {
    mapping.virtual_first.saturating_add(mapping.count - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(virtual_side: &str, real_side: &str) -> MappingSpec {
        MappingSpec::parse(virtual_side, real_side).expect("a valid mapping")
    }

    fn table() -> DesiredTable {
        DesiredTable::new(Capacity { addresses: 3, ports: 10, prefixes: 2 })
    }

    #[test]
    fn admitting_says_what_the_maps_must_do() {
        let mut desired = table();
        let first = spec("10.0.0.1", "192.0.2.1");
        assert_eq!(desired.admit(first, None, Source::Fleet), Ok(Change::Added(first)));
        assert_eq!(desired.admit(first, Some("label".into()), Source::Fleet), Ok(Change::Unchanged));
        let moved = spec("10.0.0.1", "192.0.2.9");
        assert_eq!(desired.admit(moved, None, Source::Fleet), Ok(Change::Changed { old: first, new: moved }));
        // The old REAL is free again.
        let reuse = spec("10.0.0.2", "192.0.2.1");
        assert_eq!(desired.admit(reuse, None, Source::Fleet), Ok(Change::Added(reuse)));
        assert_eq!(desired.remove("10.0.0.1", Source::Fleet), Change::Removed(moved));
        assert_eq!(desired.remove("10.0.0.1", Source::Fleet), Change::Unchanged);
        assert_eq!(desired.len(), 1);
    }

    #[test]
    fn a_refused_mapping_leaves_the_table_as_it_was() {
        let mut desired = table();
        desired.admit(spec("10.0.0.1", "192.0.2.1"), None, Source::Fleet).expect("admitted");
        let taken = desired.admit(spec("10.0.0.2", "192.0.2.1"), None, Source::Fleet);
        assert!(matches!(taken, Err(Refusal::Conflict { .. })), "a REAL claimed twice must be refused: {taken:?}");
        let range = spec("10.0.0.3:100-103/tcp", "192.0.2.3:100-103/tcp");
        desired.admit(range, None, Source::Fleet).expect("a range is admitted");
        let overlap = desired.admit(spec("10.0.0.3:103/tcp", "192.0.2.4:103/tcp"), None, Source::Fleet);
        assert!(matches!(overlap, Err(Refusal::Overlaps { .. })), "overlapping ports must be refused: {overlap:?}");
        // A range change that conflicts keeps the old range in the model.
        let bad_change = desired.admit(spec("10.0.0.3:100-103/tcp", "10.0.0.1:100-103/tcp"), None, Source::Fleet);
        assert!(bad_change.is_err(), "a REAL that is a VIRTUAL elsewhere must be refused");
        assert_eq!(desired.get("10.0.0.3:100-103/tcp"), Some(&range));
        let widened = spec("10.0.0.3:100-104/tcp", "192.0.2.3:100-104/tcp");
        assert!(desired.admit(widened, None, Source::Fleet).is_err(), "overlaps the range it would replace");
        assert_eq!(desired.mappings().len(), 2);
    }

    #[test]
    fn a_mapping_to_this_host_is_its_own() {
        let local = ["192.0.2.5".parse().expect("address"), "127.0.0.1".parse().expect("address")];
        assert!(is_own(&spec("10.0.0.5", "192.0.2.5"), &local));
        assert!(!is_own(&spec("10.0.0.6", "192.0.2.6"), &local));
        assert!(is_own(&spec("10.0.0.5:80/tcp", "192.0.2.5:8080/tcp"), &local));
        assert!(is_own(&spec("10.9.0.0/24", "192.0.2.0/24"), &local));
        assert!(!is_own(&spec("10.9.0.0/24", "198.51.100.0/24"), &local));
    }

    #[test]
    fn local_mappings_win_and_capacity_is_enforced() {
        let mut desired = table();
        desired.admit(spec("10.0.0.1", "192.0.2.1"), None, Source::Local).expect("admitted");
        let fleet = desired.admit(spec("10.0.0.1", "192.0.2.7"), None, Source::Fleet);
        assert!(matches!(fleet, Err(Refusal::LocalWins { .. })), "{fleet:?}");
        assert_eq!(desired.remove("10.0.0.1", Source::Fleet), Change::Unchanged, "the fleet cannot remove it");
        desired.admit(spec("10.0.0.2", "192.0.2.2"), None, Source::Fleet).expect("admitted");
        desired.admit(spec("10.0.0.3", "192.0.2.3"), None, Source::Fleet).expect("admitted");
        let full = desired.admit(spec("10.0.0.4", "192.0.2.4"), None, Source::Fleet);
        assert_eq!(full, Err(Refusal::Full { key: "10.0.0.4".into(), table: "address", capacity: 3 }));
        // A retarget needs no new entry.
        desired.admit(spec("10.0.0.3", "192.0.2.33"), None, Source::Fleet).expect("a retarget fits");
        let ports = desired.admit(spec("10.0.0.9:1-11/udp", "192.0.2.9:1-11/udp"), None, Source::Fleet);
        assert!(matches!(ports, Err(Refusal::Full { table: "port", .. })), "{ports:?}");
    }
}
