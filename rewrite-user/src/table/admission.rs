//! The one admission of mappings. Every source (a `[[mapping]]` of the config file, a
//! fleet table entry, `map add`) is admitted here, once, against the table's rules
//! (`rewrite_common::validate`) and its capacity; what is admitted becomes a plan of map
//! writes ([`crate::table::plan`]) that is written without being checked again (the
//! kernel still refuses a key that exists: `BPF_NOEXIST`).
//!
//! A [`DesiredTable`] is the table as it must be: a model of the maps with every
//! admitted mapping, its label and its source. A config file is admitted whole when it
//! is read; the agent adds the fleet's mappings one key at a time, and a refused one
//! does not stop the rest (two writers racing, or a key written by hand with etcdctl):
//! what fits is kept and what does not is refused with the reason. Each admission also
//! says what the maps must do (add, change, remove), so a single fleet change costs a
//! few map writes, not a diff of the whole table.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use rewrite_common::{
    maps::MAX_PREFIX_MAPPINGS,
    model::ModelTable,
    protocol::Protocol,
    spec::{Footprint, MappingKey, MappingSpec},
    validate::MappingConflict,
};

/// Where a mapping comes from. A local mapping wins over a fleet mapping of the same
/// VIRTUAL: the node's own config is the operator's explicit word for this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Local,
    Fleet,
}

/// One admitted mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub spec: MappingSpec,
    pub label: Option<String>,
    pub source: Source,
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
    LocalWins { key: MappingKey },
    #[error("VIRTUAL {key} overlaps the mapping of {other}")]
    Overlaps { key: MappingKey, other: MappingKey },
    #[error("{key}: {conflict}")]
    Conflict { key: MappingKey, conflict: MappingConflict },
    #[error("{key}: the {table} table is full ({capacity} entries)")]
    Full { key: MappingKey, table: &'static str, capacity: u64 },
}

/// Entries each map holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub addresses: u64,
    pub ports: u64,
    pub prefixes: u64,
}

impl Capacity {
    /// The maps of a table created with room for `max_mappings` (and the fixed prefix
    /// tries).
    pub fn of_table(max_mappings: u32) -> Self {
        Self {
            addresses: u64::from(max_mappings),
            ports: u64::from(max_mappings),
            prefixes: u64::from(MAX_PREFIX_MAPPINGS),
        }
    }

    /// No limit: a fleet table read in whole, before it meets a node's maps.
    pub const UNBOUNDED: Self = Self { addresses: u64::MAX, ports: u64::MAX, prefixes: u64::MAX };

    /// The first map `used` overflows.
    fn overflow(&self, used: Footprint) -> Option<Overflow> {
        [
            (used.addresses, self.addresses, "address"),
            (used.ports, self.ports, "port"),
            (used.prefixes, self.prefixes, "prefix"),
        ]
        .into_iter()
        .find(|(used, capacity, _)| used > capacity)
        .map(|(needed, capacity, table)| Overflow { table, capacity, needed })
    }
}

/// A map too small for what a table needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {table} table would overflow: it holds {capacity} entries and {needed} are needed")]
pub struct Overflow {
    pub table: &'static str,
    pub capacity: u64,
    pub needed: u64,
}

/// Whether `spec` sends packets to this host (its REAL is one of `local`, or a REAL
/// prefix holds one of them). A fleet table lists every node, this one too; on this
/// node such a mapping would restore every packet sent to the host's own address to the
/// VIRTUAL, breaking each connection the host opened from that address (its link to
/// etcd first). So a node applies the mappings of the others only.
pub fn is_own(spec: &MappingSpec, local: &[IpAddr]) -> bool {
    match spec {
        MappingSpec::Address { real_addr, .. } => local.contains(real_addr),
        MappingSpec::Ports(ports) => local.contains(&ports.real_addr),
        MappingSpec::Prefix(prefix) => local.iter().any(|addr| prefix.real_prefix().contains(*addr)),
    }
}

/// What a mapping occupies of the VIRTUAL space: an address, each port of a range, or
/// a prefix. Two mappings that occupy one are the same VIRTUAL mapped twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Occupied {
    Address(IpAddr),
    Port(Protocol, IpAddr, u16),
    Prefix(IpAddr, u8),
}

fn occupied(spec: &MappingSpec) -> Vec<Occupied> {
    match spec {
        MappingSpec::Address { virtual_addr, .. } => vec![Occupied::Address(*virtual_addr)],
        MappingSpec::Ports(mapping) => {
            mapping.ports().map(|(port, _)| Occupied::Port(mapping.protocol, mapping.virtual_addr, port)).collect()
        }
        MappingSpec::Prefix(mapping) => vec![Occupied::Prefix(mapping.virtual_net, mapping.len)],
    }
}

/// The table as it must be: every admitted mapping, checked together.
#[derive(Clone, Debug)]
pub struct DesiredTable {
    model: ModelTable,
    admitted: BTreeMap<MappingKey, Admitted>,
    /// Which admitted mapping holds each VIRTUAL address, port or prefix.
    owners: HashMap<Occupied, MappingKey>,
    capacity: Capacity,
    used: Footprint,
}

/// Two tables are equal when they admitted the same mappings (with their labels and
/// sources); how they got there does not matter.
impl PartialEq for DesiredTable {
    fn eq(&self, other: &Self) -> bool {
        self.admitted == other.admitted
    }
}

impl Eq for DesiredTable {}

impl DesiredTable {
    pub fn new(capacity: Capacity) -> Self {
        Self {
            model: ModelTable::default(),
            admitted: BTreeMap::new(),
            owners: HashMap::new(),
            capacity,
            used: Footprint::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty()
    }

    pub fn contains(&self, key: &MappingKey) -> bool {
        self.admitted.contains_key(key)
    }

    /// The spec admitted under `key`, if any.
    pub fn get(&self, key: &MappingKey) -> Option<&MappingSpec> {
        self.admitted.get(key).map(|admitted| &admitted.spec)
    }

    /// The admitted mappings, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Admitted> {
        self.admitted.values()
    }

    /// The admitted mappings' specs, in key order.
    pub fn specs(&self) -> impl Iterator<Item = MappingSpec> + '_ {
        self.admitted.values().map(|admitted| admitted.spec)
    }

    /// The entries the admitted mappings take in each map.
    pub fn footprint(&self) -> Footprint {
        self.used
    }

    /// Holds the table to another capacity (the live table's): refused, and the table
    /// left as it was, if what is admitted does not fit.
    pub fn set_capacity(&mut self, capacity: Capacity) -> Result<(), Overflow> {
        self.fits(capacity)?;
        self.capacity = capacity;
        Ok(())
    }

    /// Whether what is admitted fits a table of `capacity`.
    pub fn fits(&self, capacity: Capacity) -> Result<(), Overflow> {
        capacity.overflow(self.used).map_or(Ok(()), Err)
    }

    /// Admits `spec` from `source`, replacing what `source` had under the same key, or
    /// says why not; a refusal leaves the table as it was.
    pub fn admit(&mut self, spec: MappingSpec, label: Option<String>, source: Source) -> Result<Change, Refusal> {
        let key = spec.key();
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
        let claimed = occupied(&spec);
        if let Some(other) = claimed.iter().find_map(|claim| self.owners.get(claim).filter(|owner| **owner != key)) {
            return Err(Refusal::Overlaps { key, other: *other });
        }
        let after = self.used - old.as_ref().map(|old| old.spec.footprint()).unwrap_or_default() + spec.footprint();
        if let Some(Overflow { table, capacity, .. }) = self.capacity.overflow(after) {
            return Err(Refusal::Full { key, table, capacity });
        }
        self.model_replace(old.as_ref().map(|old| &old.spec), &spec)
            .map_err(|conflict| Refusal::Conflict { key, conflict })?;
        if let Some(old) = &old {
            for claim in occupied(&old.spec) {
                self.owners.remove(&claim);
            }
        }
        self.owners.extend(claimed.into_iter().map(|claim| (claim, key)));
        self.used = after;
        self.admitted.insert(key, Admitted { spec, label, source });
        Ok(match old {
            Some(old) => Change::Changed { old: old.spec, new: spec },
            None => Change::Added(spec),
        })
    }

    /// Removes the mapping `source` holds under `key` (a fleet removal does not remove
    /// a local mapping of the same VIRTUAL).
    pub fn remove(&mut self, key: &MappingKey, source: Source) -> Change {
        match self.admitted.get(key) {
            Some(admitted) if admitted.source == source => {}
            _ => return Change::Unchanged,
        }
        let Some(admitted) = self.admitted.remove(key) else { return Change::Unchanged };
        self.model.remove_spec(&admitted.spec);
        for claim in occupied(&admitted.spec) {
            self.owners.remove(&claim);
        }
        self.used = self.used - admitted.spec.footprint();
        Change::Removed(admitted.spec)
    }

    /// Puts `new` in the model in place of `old`; on a conflict the model is as before.
    fn model_replace(&mut self, old: Option<&MappingSpec>, new: &MappingSpec) -> Result<(), MappingConflict> {
        match (old, new) {
            // An address retarget: the model checks and releases the old REAL itself.
            (Some(MappingSpec::Address { .. }) | None, MappingSpec::Address { .. }) | (None, _) => {
                self.model.add_spec(new).map(drop)
            }
            (Some(old), _) => {
                self.model.remove_spec(old);
                self.model.add_spec(new).map(drop).inspect_err(|_| {
                    // It was in the model a moment ago, so it fits again.
                    let _ = self.model.add_spec(old);
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(virtual_side: &str, real_side: &str) -> MappingSpec {
        MappingSpec::parse(virtual_side, real_side).expect("a valid mapping")
    }

    fn key(text: &str) -> MappingKey {
        text.parse().expect("a VIRTUAL side")
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
        assert_eq!(desired.remove(&key("10.0.0.1"), Source::Fleet), Change::Removed(moved));
        assert_eq!(desired.remove(&key("10.0.0.1"), Source::Fleet), Change::Unchanged);
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
        assert_eq!(desired.get(&key("10.0.0.3:100-103/tcp")), Some(&range));
        let widened = spec("10.0.0.3:100-104/tcp", "192.0.2.3:100-104/tcp");
        assert!(desired.admit(widened, None, Source::Fleet).is_err(), "overlaps the range it would replace");
        assert_eq!(desired.len(), 2);
        assert_eq!(desired.footprint(), Footprint { addresses: 1, ports: 4, prefixes: 0 });
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
        assert_eq!(desired.remove(&key("10.0.0.1"), Source::Fleet), Change::Unchanged, "the fleet cannot remove it");
        desired.admit(spec("10.0.0.2", "192.0.2.2"), None, Source::Fleet).expect("admitted");
        desired.admit(spec("10.0.0.3", "192.0.2.3"), None, Source::Fleet).expect("admitted");
        let full = desired.admit(spec("10.0.0.4", "192.0.2.4"), None, Source::Fleet);
        assert_eq!(full, Err(Refusal::Full { key: key("10.0.0.4"), table: "address", capacity: 3 }));
        // A retarget needs no new entry.
        desired.admit(spec("10.0.0.3", "192.0.2.33"), None, Source::Fleet).expect("a retarget fits");
        let ports = desired.admit(spec("10.0.0.9:1-11/udp", "192.0.2.9:1-11/udp"), None, Source::Fleet);
        assert!(matches!(ports, Err(Refusal::Full { table: "port", .. })), "{ports:?}");
        let smaller = Capacity { addresses: 2, ports: 10, prefixes: 2 };
        assert_eq!(desired.set_capacity(smaller), Err(Overflow { table: "address", capacity: 2, needed: 3 }));
        assert_eq!(desired.set_capacity(Capacity::UNBOUNDED), Ok(()));
    }
}
