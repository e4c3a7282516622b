//! The live table as `map list`, `stats`, `export` and `apply` read it: every mapping in
//! its written form (consecutive ports merged into ranges), any half-applied reverse
//! entries, and each mapping's counters.

use std::net::IpAddr;

use aya::maps::{HashMap, MapData};
use rewrite_common::{
    mapping::{AddressMapping, PortMapping, PrefixMapping},
    maps::{
        Addr, AddressEntry, Counts, Endpoint, EndpointEntry, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_PORT_FORWARD,
        MAP_PORT_REVERSE, MAP_PREFIX_FORWARD, MAP_PREFIX_REVERSE, MappingStats, TrieKey, trie_key,
    },
    protocol::Protocol,
    spec::MappingSpec,
};

use crate::{
    Error,
    dataplane::objects::is_not_found,
    table::live::{MappingTable, PrefixMap},
};

/// The table as [`MappingTable::list`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Complete address mappings, ordered by VIRTUAL.
    pub mappings: Vec<AddressMapping>,
    /// Port-scoped mappings, consecutive ports merged into ranges.
    pub port_mappings: Vec<PortMapping>,
    /// Prefix mappings, ordered by VIRTUAL network.
    pub prefixes: Vec<PrefixMapping>,
    /// Reverse entries without their forward entry (from an interrupted command):
    /// ingress still rewrites REAL to VIRTUAL for them. `map del VIRTUAL` removes one.
    pub orphans: Vec<AddressMapping>,
}

/// One mapping in the written form, as `map list` and `stats` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    #[serde(rename = "virtual")]
    pub virtual_side: String,
    #[serde(rename = "real")]
    pub real_side: String,
    /// "address", "port" or "prefix".
    pub kind: &'static str,
}

/// The map keys of a listed mapping's entries, where its counters are.
enum EntryKeys {
    Address {
        virtual_addr: Addr,
        real_addr: Addr,
    },
    Prefix {
        virtual_net: TrieKey,
        real_net: TrieKey,
    },
    /// One (VIRTUAL, REAL) endpoint pair per port of the range.
    Ports(Vec<(Endpoint, Endpoint)>),
}

impl Listing {
    /// Address mappings first, then prefix and port-scoped ones, each in the written
    /// form. Orphans are not mappings and are left out.
    pub fn rows(&self) -> Vec<Row> {
        self.rows_with_keys().into_iter().map(|(row, _)| row).collect()
    }

    fn rows_with_keys(&self) -> Vec<(Row, EntryKeys)> {
        let row = |spec: MappingSpec, kind| Row {
            virtual_side: spec.virtual_side().to_string(),
            real_side: spec.real_side().to_string(),
            kind,
        };
        let mut rows: Vec<(Row, EntryKeys)> = self
            .mappings
            .iter()
            .map(|mapping| {
                let keys = EntryKeys::Address {
                    virtual_addr: mapping.virtual_addr.into(),
                    real_addr: mapping.real_addr.into(),
                };
                (row(mapping.spec(), "address"), keys)
            })
            .collect();
        for prefix in &self.prefixes {
            let key_len = PrefixMapping::key_len(prefix.virtual_net, prefix.len);
            let keys = EntryKeys::Prefix {
                virtual_net: trie_key(key_len, prefix.virtual_net.into()),
                real_net: trie_key(key_len, prefix.real_net.into()),
            };
            rows.push((row(MappingSpec::Prefix(*prefix), "prefix"), keys));
        }
        for mapping in &self.port_mappings {
            rows.push((row(MappingSpec::Ports(*mapping), "port"), EntryKeys::Ports(mapping.endpoints().collect())));
        }
        rows
    }
}

/// Port-scoped mappings in their canonical form, as `map list` shows them: every port
/// on its own, then runs of consecutive ports that move together merged into one range.
pub fn merge_port_runs(mappings: impl IntoIterator<Item = PortMapping>) -> Vec<PortMapping> {
    let mut single: Vec<PortMapping> = mappings
        .into_iter()
        .flat_map(|mapping| {
            mapping.ports().map(move |(virtual_first, real_first)| PortMapping {
                virtual_first,
                real_first,
                count: 1,
                ..mapping
            })
        })
        .collect();
    single.sort();
    let mut merged: Vec<PortMapping> = Vec::new();
    for entry in single {
        if let Some(last) = merged.last_mut()
            && (last.protocol, last.virtual_addr, last.real_addr)
                == (entry.protocol, entry.virtual_addr, entry.real_addr)
            && u32::from(last.virtual_first) + u32::from(last.count) == u32::from(entry.virtual_first)
            && u32::from(last.real_first) + u32::from(last.count) == u32::from(entry.real_first)
        {
            last.count += 1;
            continue;
        }
        merged.push(entry);
    }
    merged
}

impl MappingTable {
    /// Every mapping, ordered by VIRTUAL, and any half-applied reverse entries.
    pub fn list(&self) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        for entry in self.forward.iter() {
            let (key, value) = entry.map_err(|source| Error::map(MAP_ADDR_FORWARD, source))?;
            listing.mappings.push(AddressMapping { virtual_addr: key.into(), real_addr: value.addr.into() });
        }
        listing.mappings.sort();
        for entry in self.reverse.iter() {
            let (key, value) = entry.map_err(|source| Error::map(MAP_ADDR_REVERSE, source))?;
            let entry = AddressMapping { virtual_addr: value.addr.into(), real_addr: key.into() };
            if listing.mappings.binary_search(&entry).is_err() {
                listing.orphans.push(entry);
            }
        }
        listing.orphans.sort();
        listing.prefixes = self.read_prefixes()?;
        let mut entries = Vec::new();
        for entry in self.port_forward.iter() {
            let (key, value) = entry.map_err(|source| Error::map(MAP_PORT_FORWARD, source))?;
            entries.push(PortMapping {
                protocol: Protocol::from_number(key.protocol).unwrap_or(Protocol::Tcp),
                virtual_addr: key.addr.into(),
                virtual_first: u16::from_be_bytes(key.port),
                real_addr: value.endpoint.addr.into(),
                real_first: u16::from_be_bytes(value.endpoint.port),
                count: 1,
            });
        }
        listing.port_mappings = merge_port_runs(entries);
        Ok(listing)
    }

    /// Each listed mapping's counters, in the order of [`Listing::rows`]: its reverse
    /// entries' counts as ingress, its forward entries' as egress. Reads each map once.
    pub fn counters(&self, listing: &Listing) -> Result<Vec<(Row, MappingStats)>, Error> {
        fn collect<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
            map: &HashMap<MapData, K, V>,
            name: &'static str,
            counts: impl Fn(&V) -> Counts,
        ) -> Result<std::collections::HashMap<K, Counts>, Error> {
            map.iter()
                .map(|entry| entry.map(|(key, value)| (key, counts(&value))).map_err(|source| Error::map(name, source)))
                .collect()
        }
        let forward = collect(&self.forward, MAP_ADDR_FORWARD, |entry: &AddressEntry| entry.counts)?;
        let reverse = collect(&self.reverse, MAP_ADDR_REVERSE, |entry: &AddressEntry| entry.counts)?;
        let port_forward = collect(&self.port_forward, MAP_PORT_FORWARD, |entry: &EndpointEntry| entry.counts)?;
        let port_reverse = collect(&self.port_reverse, MAP_PORT_REVERSE, |entry: &EndpointEntry| entry.counts)?;
        let prefix_counts = |trie: &PrefixMap, name, key: &TrieKey| match trie.get(key, 0) {
            Ok(entry) => Ok(entry.counts),
            Err(error) if is_not_found(&error) => Ok(Counts::default()),
            Err(source) => Err(Error::map(name, source)),
        };
        let mut rows = Vec::new();
        for (row, keys) in listing.rows_with_keys() {
            let stats = match keys {
                EntryKeys::Address { virtual_addr, real_addr } => MappingStats::from_entries(
                    reverse.get(&real_addr).copied().unwrap_or_default(),
                    forward.get(&virtual_addr).copied().unwrap_or_default(),
                ),
                EntryKeys::Prefix { virtual_net, real_net } => MappingStats::from_entries(
                    prefix_counts(&self.prefix_reverse, MAP_PREFIX_REVERSE, &real_net)?,
                    prefix_counts(&self.prefix_forward, MAP_PREFIX_FORWARD, &virtual_net)?,
                ),
                EntryKeys::Ports(endpoints) => {
                    let per_port: Vec<MappingStats> = endpoints
                        .iter()
                        .map(|(virtual_endpoint, real_endpoint)| {
                            MappingStats::from_entries(
                                port_reverse.get(real_endpoint).copied().unwrap_or_default(),
                                port_forward.get(virtual_endpoint).copied().unwrap_or_default(),
                            )
                        })
                        .collect();
                    MappingStats::sum(&per_port)
                }
            };
            rows.push((row, stats));
        }
        Ok(rows)
    }

    /// Every prefix mapping, read from the forward trie.
    pub(crate) fn read_prefixes(&self) -> Result<Vec<PrefixMapping>, Error> {
        let mut prefixes = Vec::new();
        for entry in self.prefix_forward.iter() {
            let (key, entry) = entry.map_err(|source| Error::map(MAP_PREFIX_FORWARD, source))?;
            let target = entry.target;
            let virtual_net = IpAddr::from(Addr { octets: key.data() });
            let family_bits = if virtual_net.is_ipv4() { 96 } else { 0 };
            let len = u8::try_from(key.prefix_len() - family_bits).unwrap_or(u8::MAX);
            prefixes.push(PrefixMapping { virtual_net, real_net: IpAddr::from(target.network), len });
        }
        prefixes.sort();
        Ok(prefixes)
    }
}
