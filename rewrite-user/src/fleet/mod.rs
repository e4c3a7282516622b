//! The fleet table in etcd: mappings shared by every node of a cluster, address pools
//! from which nodes claim their VIRTUAL (overlay) addresses, and node registrations.
//! `rewrite agent --etcd` keeps a node's maps equal to the table; `rewrite fleet`
//! edits it.
//!
//! # Key layout (schema version 1)
//!
//! Every key lives under a prefix, one per cluster (`/rewrite/CLUSTER`). Values are JSON.
//!
//! ```text
//! PREFIX/schema                  "1": the layout version; a reader refuses another
//! PREFIX/generation              rewritten by every change made through rewrite, so a
//!                                writer that read the table at one generation commits
//!                                only if nobody changed it since (optimistic locking)
//! PREFIX/mappings/VIRTUAL        {"virtual": "10.0.0.5", "real": "192.0.2.5",
//!                                 "label": "es-1", "node": "node-a",
//!                                 "zones": {"vpc-a": "172.16.0.5"}}   label, node, zones optional
//!                                (an agent in zone vpc-a applies 172.16.0.5);
//!                                VIRTUAL in the key is written as `map add` writes it
//!                                (10.0.0.5, 10.0.0.5:9300/tcp, 10.0.0.0/24, [fd00::5]:53/udp)
//! PREFIX/pools/POOL              {"prefixes": ["100.64.0.0/24", "fd00:64::/120"]}
//! PREFIX/claims/POOL/ADDRESS     {"node": "node-a", "real": "192.0.2.5"}: ADDRESS of POOL is
//!                                node-a's, for good (no lease), so a node that restarts
//!                                gets the same VIRTUAL back; or, with a release delay, held
//!                                by a lease that outlives the node's by that delay
//! PREFIX/holders/POOL/NODE/ADDRESS  the same claim, indexed by node (written and removed
//!                                with it), so a registering node reads its own claims only
//! PREFIX/nodes/NODE              {"real": [...], "virtual": [...], "pool": "..."}: held by
//!                                the node's lease, so it exists while the node is alive
//! ```
//!
//! A registered node's mappings are written with its lease (removed when the lease
//! expires), with a second lease that outlives it by a grace period, or with none (kept
//! until `rewrite fleet del`): see [`MappingExpiry`].

pub mod config;
pub mod error;
pub mod layout;
pub mod options;
pub mod pool;
pub mod register;
pub mod schema;
pub mod store;
pub mod watch;

pub use self::{
    error::{FleetError, REQUEST_TIMEOUT, describe},
    layout::{Layout, SCHEMA_VERSION, check_name},
    options::{FleetSettings, MappingExpiry, NodeOptions, StoreOptions},
    register::Leases,
    schema::{
        Entries, FleetMapping, PoolView, Snapshot, StoredClaim, StoredMapping, StoredNode, StoredPool, decode_mapping,
    },
    store::Store,
};

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use super::{
        layout::range_end,
        pool::{candidates, parse_pool_prefix},
        *,
    };

    #[test]
    fn layout_checks_the_prefix() {
        let layout = Layout::new("/rewrite/prod/").expect("a valid prefix");
        assert_eq!(layout.mapping("10.0.0.5:9300/tcp"), "/rewrite/prod/mappings/10.0.0.5:9300/tcp");
        assert_eq!(
            layout.claim("overlay", "100.64.0.1".parse().expect("address")),
            "/rewrite/prod/claims/overlay/100.64.0.1"
        );
        for bad in ["rewrite/prod", "/", "//x", "/a//b", "/a b"] {
            assert!(Layout::new(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check_name("node", "es-data-1.dc2").is_ok());
        for bad in ["", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(check_name("node", bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn stored_mappings_must_match_their_key() {
        let value = br#"{"virtual": "10.0.0.5:9300/tcp", "real": "192.0.2.5:9300/tcp", "label": "es"}"#;
        let mapping = decode_mapping("10.0.0.5:9300/tcp", value).expect("decodes");
        assert_eq!(mapping.label.as_deref(), Some("es"));
        assert_eq!(
            decode_mapping("10.0.0.5:9300/tcp", &serde_json::to_vec(&mapping.stored()).expect("json")),
            Ok(mapping)
        );
        let wrong_key = decode_mapping("10.0.0.6", br#"{"virtual": "10.0.0.5", "real": "192.0.2.5"}"#);
        assert!(wrong_key.expect_err("a key that names another VIRTUAL").contains("10.0.0.5"));
        assert!(decode_mapping("10.0.0.5", br#"{"virtual": "10.0.0.5", "real": "192.0.2.5", "x": 1}"#).is_err());
        assert!(decode_mapping("10.0.0.5", b"not json").is_err());
    }

    #[test]
    fn a_mapping_may_carry_a_real_per_zone() {
        let value = br#"{"virtual": "10.0.0.5", "real": "192.0.2.5", "zones": {"vpc-a": "172.16.0.5"}}"#;
        let mapping = decode_mapping("10.0.0.5", value).expect("decodes");
        assert_eq!(mapping.spec_in(Some("vpc-a")).to_string(), "10.0.0.5 -> 172.16.0.5");
        assert_eq!(mapping.spec_in(Some("vpc-b")).to_string(), "10.0.0.5 -> 192.0.2.5", "the default elsewhere");
        assert_eq!(mapping.spec_in(None).to_string(), "10.0.0.5 -> 192.0.2.5");
        assert_eq!(mapping.clone().in_zone(Some("vpc-a")).spec.to_string(), "10.0.0.5 -> 172.16.0.5");
        let written = serde_json::to_vec(&mapping.stored()).expect("json");
        assert_eq!(decode_mapping("10.0.0.5", &written), Ok(mapping), "zones are written back");
        // A zone's REAL must fit the VIRTUAL as the default does, and zones are names.
        let port = br#"{"virtual": "10.0.0.5:9300/tcp", "real": "192.0.2.5:9300/tcp", "zones": {"a": "172.16.0.5"}}"#;
        assert!(decode_mapping("10.0.0.5:9300/tcp", port).expect_err("an address for a port").contains("zone a"));
        let prefix = br#"{"virtual": "10.0.0.5", "real": "192.0.2.5", "zones": {"a": "172.16.0.0/24"}}"#;
        assert!(decode_mapping("10.0.0.5", prefix).is_err(), "a prefix REAL for an address VIRTUAL");
        let name = br#"{"virtual": "10.0.0.5", "real": "192.0.2.5", "zones": {"a/b": "172.16.0.5"}}"#;
        assert!(decode_mapping("10.0.0.5", name).expect_err("a zone that is no name").contains("zone"));
        // Tables written before zones read the same.
        let plain = decode_mapping("10.0.0.5", br#"{"virtual": "10.0.0.5", "real": "192.0.2.5"}"#).expect("decodes");
        assert!(
            plain.zones.is_empty()
                && !String::from_utf8_lossy(&serde_json::to_vec(&plain.stored()).expect("json")).contains("zones")
        );
    }

    #[test]
    fn pools_hand_out_every_host_address_once_from_the_seed_on() {
        let address = |text: &str| text.parse::<IpAddr>().expect("address");
        let pool = [parse_pool_prefix("100.64.0.0/30").expect("pool"), parse_pool_prefix("fd00::/127").expect("pool")];
        let v4 = address("192.0.2.1");
        let walk = |seed| candidates(&pool, v4, seed).collect::<Vec<_>>();
        // A /30 has two host addresses: never the network or the broadcast address.
        assert_eq!(walk(0), [address("100.64.0.1"), address("100.64.0.2")]);
        assert_eq!(walk(1), [address("100.64.0.2"), address("100.64.0.1")], "starts at the seed, wraps around");
        assert_eq!(walk(u64::MAX), walk(1), "the seed is taken modulo the pool's size");
        let v6 = address("2001:db8::1");
        assert_eq!(candidates(&pool, v6, 7).collect::<Vec<_>>(), [address("fd00::1")]);
        // Two prefixes of a family are one sequence.
        let two = [parse_pool_prefix("10.0.0.0/30").expect("pool"), parse_pool_prefix("10.0.1.0/30").expect("pool")];
        let all: Vec<IpAddr> = candidates(&two, v4, 3).collect();
        assert_eq!(all, ["10.0.1.2", "10.0.0.1", "10.0.0.2", "10.0.1.1"].map(address));
        // A huge IPv6 pool is walked lazily.
        let wide = [parse_pool_prefix("fd00::/64").expect("pool")];
        assert_eq!(candidates(&wide, v6, 0).next(), Some(address("fd00::1")));
        assert_eq!(candidates(&[], v4, 0).next(), None);
        assert!(parse_pool_prefix("100.64.0.1/24").is_err(), "host bits set");
        assert!(parse_pool_prefix("100.64.0.1").is_err(), "not a prefix");
        assert_eq!(
            parse_pool_prefix("100.64.0.7/32").map(|prefix| prefix.to_string()).ok().as_deref(),
            Some("100.64.0.7/32")
        );
        assert_eq!("90s".parse(), Ok(MappingExpiry::After(Duration::from_secs(90))));
        assert_eq!("2h".parse(), Ok(MappingExpiry::After(Duration::from_secs(7200))));
        assert_eq!("never".parse(), Ok(MappingExpiry::Never));
        assert!("0s".parse::<MappingExpiry>().is_err() && "5 m".parse::<MappingExpiry>().is_err());
        assert_eq!(range_end("/a/"), b"/a0".to_vec());
    }
}
