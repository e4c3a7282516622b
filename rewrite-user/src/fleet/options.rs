//! What an agent or `rewrite fleet` needs to reach the table, and how a node registers.

use std::{net::IpAddr, path::PathBuf, time::Duration};

/// How to reach the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    pub endpoints: Vec<String>,
    /// Where to follow the table from, if not `endpoints`: typically an etcd gRPC proxy
    /// near the node, which turns the watches of a rack's agents into one watch on the
    /// cluster. Registration, leases and writes still go to `endpoints`.
    pub watch_endpoints: Vec<String>,
    pub prefix: String,
    /// CA certificate that signs the servers' certificates (PEM): turns TLS on.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that check clients.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    /// A file whose first line is the user's password (kept out of argv and the config).
    pub password_file: Option<PathBuf>,
    /// HTTP/2 keepalive: a connection that answers no ping for this long is dead, which
    /// is how the agent learns of a silent network failure.
    pub keepalive: Duration,
}

impl StoreOptions {
    pub fn new(endpoints: Vec<String>, prefix: String) -> Self {
        Self {
            endpoints,
            watch_endpoints: Vec::new(),
            prefix,
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            keepalive: Duration::from_secs(10),
        }
    }
}

impl StoreOptions {
    /// The options to follow the table with: the watch endpoints, if any.
    pub fn for_watching(&self) -> Self {
        let mut options = self.clone();
        if !self.watch_endpoints.is_empty() {
            options.endpoints = self.watch_endpoints.clone();
        }
        options
    }

    /// Every endpoint the agent talks to (for writes and for the watch).
    pub fn all_endpoints(&self) -> Vec<String> {
        self.endpoints.iter().chain(&self.watch_endpoints).cloned().collect()
    }
}

/// What an agent follows in etcd, and how it registers its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    pub store: StoreOptions,
    pub node: Option<NodeOptions>,
    /// Longest pause between two attempts to reach etcd.
    pub retry_max: Duration,
    /// This node's zone: which REAL of a mapping with a REAL per zone it applies.
    pub zone: Option<String>,
}

/// When a registered node's mappings leave the table after the node stops renewing its
/// lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingExpiry {
    /// With the node's lease: a dead node is unreachable by its VIRTUAL after the lease
    /// TTL.
    WithLease,
    /// The lease TTL plus this grace period (for nodes that restart slowly).
    After(Duration),
    /// Never: removed by `rewrite fleet del` only.
    Never,
}

impl std::str::FromStr for MappingExpiry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "lease" => Ok(Self::WithLease),
            "never" => Ok(Self::Never),
            _ => parse_duration(text)
                .map(Self::After)
                .ok_or_else(|| format!("{text:?} is not `lease`, `never` or a grace period such as 90s, 10m or 2h")),
        }
    }
}

/// `90s`, `10m`, `2h`: a whole number with a unit.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// What a node registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    pub id: String,
    /// The node's REAL addresses; each gets a VIRTUAL of its family from the pool.
    pub reals: Vec<IpAddr>,
    pub pool: String,
    pub lease_ttl: Duration,
    pub expiry: MappingExpiry,
}
