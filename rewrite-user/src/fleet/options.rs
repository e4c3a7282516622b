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
    /// How long after its lease lapses a gone node's VIRTUAL goes back to the pool
    /// (`None`: never, the claim is the node id's for good).
    pub release_claim_after: Option<Duration>,
}

impl NodeOptions {
    /// Refuses a claim that would be released while the node's mapping may still be in
    /// the table: the address would be handed out while agents still map it to the old
    /// node. The time between the mapping leaving the table and the claim going back to
    /// the pool is the quarantine in which every agent removes the mapping.
    pub fn check(&self) -> Result<(), String> {
        let Some(release) = self.release_claim_after else { return Ok(()) };
        match self.expiry {
            MappingExpiry::Never => Err("a claim cannot be released while the node's mapping never expires \
                 (expire-after never): its address would be handed out while every agent still maps it"
                .into()),
            MappingExpiry::After(grace) if release <= grace => Err(format!(
                "the claim would be released {}s after the node is gone, before its mapping leaves the table \
                 ({}s): release it later than the mapping expires",
                release.as_secs(),
                grace.as_secs()
            )),
            _ => Ok(()),
        }
    }
}

/// When a gone node's claim goes back to the pool, as `--release-claim-after` takes it:
/// `never` or a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimRelease(pub Option<Duration>);

impl std::str::FromStr for ClaimRelease {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_release(text).map(Self)
    }
}

/// `never` or a duration, as `--release-claim-after` takes it.
pub fn parse_release(text: &str) -> Result<Option<Duration>, String> {
    if text == "never" {
        return Ok(None);
    }
    parse_duration(text)
        .map(Some)
        .ok_or_else(|| format!("{text:?} is not `never` or a duration such as 90s, 10m or 2h"))
}
