//! The values of the fleet table, as stored (JSON), and as read back and checked.

use std::{collections::BTreeMap, net::IpAddr};

use rewrite_common::spec::{MappingSpec, Side};
use serde::{Deserialize, Serialize};

use crate::{
    fleet::layout::check_name,
    table::admission::{Capacity, DesiredTable, Source},
};

/// One mapping of the fleet table, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMapping {
    #[serde(rename = "virtual")]
    pub virtual_side: Side,
    #[serde(rename = "real")]
    pub real_side: Side,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The registered node the mapping belongs to, if a node wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A REAL per zone (an agent in the zone applies it instead of `real`): a peer's
    /// private address inside its VPC, its public one across.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, Side>,
}

/// A fleet mapping, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetMapping {
    /// The mapping with its default REAL.
    pub spec: MappingSpec,
    pub label: Option<String>,
    pub node: Option<String>,
    /// The mapping in each zone that has a REAL of its own (same VIRTUAL).
    pub zones: BTreeMap<String, MappingSpec>,
}

impl FleetMapping {
    /// A mapping with one REAL for every zone.
    pub fn new(spec: MappingSpec, label: Option<String>, node: Option<String>) -> Self {
        Self { spec, label, node, zones: BTreeMap::new() }
    }

    pub fn stored(&self) -> StoredMapping {
        StoredMapping {
            virtual_side: self.spec.virtual_side(),
            real_side: self.spec.real_side(),
            label: self.label.clone(),
            node: self.node.clone(),
            zones: self.zones.iter().map(|(zone, spec)| (zone.clone(), spec.real_side())).collect(),
        }
    }

    /// The mapping an agent in `zone` applies: the zone's REAL if it has one, the
    /// default otherwise.
    pub fn spec_in(&self, zone: Option<&str>) -> MappingSpec {
        zone.and_then(|zone| self.zones.get(zone)).copied().unwrap_or(self.spec)
    }

    /// This mapping as an agent in `zone` applies it.
    #[must_use]
    pub fn in_zone(mut self, zone: Option<&str>) -> Self {
        self.spec = self.spec_in(zone);
        self
    }

    /// Adds a zone's REAL, which must fit the VIRTUAL as the default REAL does.
    pub fn with_zone(mut self, zone: &str, real: Side) -> Result<Self, String> {
        check_name("zone", zone).map_err(|error| error.to_string())?;
        let spec = MappingSpec::new(self.spec.virtual_side(), real).map_err(|error| format!("zone {zone}: {error}"))?;
        self.zones.insert(zone.to_owned(), spec);
        Ok(self)
    }
}

/// Reads the mapping stored under `key` (the part after `PREFIX/mappings/`).
pub fn decode_mapping(key: &str, value: &[u8]) -> Result<FleetMapping, String> {
    let stored: StoredMapping = serde_json::from_slice(value).map_err(|error| format!("not a mapping: {error}"))?;
    let spec = MappingSpec::new(stored.virtual_side, stored.real_side).map_err(|error| error.to_string())?;
    let written = spec.key().to_string();
    if written != key {
        return Err(format!("the key names {key} but its mapping's VIRTUAL is {written}"));
    }
    stored.zones.into_iter().try_fold(FleetMapping::new(spec, stored.label, stored.node), |mapping, (zone, real)| {
        mapping.with_zone(&zone, real)
    })
}

/// The mapping keys of a table read, each decoded or with the reason it cannot be.
pub type Entries = Vec<(String, Result<FleetMapping, String>)>;

/// The fleet table at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub entries: Entries,
    /// The mod revision of the generation key (0 if it does not exist yet).
    pub(super) generation: i64,
}

impl Snapshot {
    /// The valid mappings admitted in key order, with the refusals of the others.
    pub fn admitted(&self) -> (DesiredTable, Vec<(String, String)>) {
        let mut table = DesiredTable::new(Capacity::UNBOUNDED);
        let mut refused = Vec::new();
        for (key, entry) in &self.entries {
            let result = entry.as_ref().map_err(Clone::clone).and_then(|mapping| {
                table.admit(mapping.spec, mapping.label.clone(), Source::Fleet).map_err(|error| error.to_string())
            });
            if let Err(why) = result {
                refused.push((key.clone(), why));
            }
        }
        (table, refused)
    }
}

/// A pool of VIRTUAL addresses, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPool {
    pub prefixes: Vec<String>,
}

/// A claim on one address of a pool, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredClaim {
    pub node: String,
    pub real: IpAddr,
}

/// A node's registration record, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredNode {
    pub real: Vec<IpAddr>,
    #[serde(rename = "virtual")]
    pub virtual_addrs: Vec<IpAddr>,
    pub pool: String,
}

/// A pool with its claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolView {
    pub name: String,
    pub prefixes: Vec<String>,
    /// Addresses the pool hands out.
    pub size: u128,
    pub claims: BTreeMap<IpAddr, StoredClaim>,
}
