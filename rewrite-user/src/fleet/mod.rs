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
//!                                 "label": "es-1", "node": "node-a"}   label and node optional;
//!                                VIRTUAL in the key is written as `map add` writes it
//!                                (10.0.0.5, 10.0.0.5:9300/tcp, 10.0.0.0/24, [fd00::5]:53/udp)
//! PREFIX/pools/POOL              {"prefixes": ["100.64.0.0/24", "fd00:64::/120"]}
//! PREFIX/claims/POOL/ADDRESS     {"node": "node-a", "real": "192.0.2.5"}: ADDRESS of POOL is
//!                                node-a's, for good (no lease), so a node that restarts
//!                                gets the same VIRTUAL back
//! PREFIX/nodes/NODE              {"real": [...], "virtual": [...], "pool": "..."}: held by
//!                                the node's lease, so it exists while the node is alive
//! ```
//!
//! A registered node's mappings are written with its lease (removed when the lease
//! expires), with a second lease that outlives it by a grace period, or with none (kept
//! until `rewrite fleet del`): see [`MappingExpiry`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, PutOptions, TlsOptions,
    Txn, TxnOp, WatchOptions,
};
use rewrite_common::spec::{MappingSpec, Side};
use serde::{Deserialize, Serialize};

use crate::desired::{Capacity, Change, DesiredTable, Refusal, Source, key_of};

pub const SCHEMA_VERSION: &str = "1";

/// Keys read per request while the table is read whole: far below gRPC's 4 MiB message
/// limit at ~150 bytes per key, and few round trips for 100,000 keys.
const PAGE: i64 = 10_000;

/// Optimistic writes tried before giving up on a table that keeps changing.
const ATTEMPTS: u32 = 50;

/// How long one request to etcd may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{prefix:?} is not a usable fleet prefix: {why}")]
    InvalidPrefix { prefix: String, why: &'static str },
    #[error("{name:?} is not a valid {what} name (1 to 128 of A-Z a-z 0-9 . _ -)")]
    InvalidName { what: &'static str, name: String },
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("--etcd-cert and --etcd-key go together: give both or neither")]
    HalfIdentity,
    #[error("cannot connect to etcd at {endpoints}: {cause}")]
    Connect { endpoints: String, cause: String },
    #[error("etcd {what} failed: {cause}")]
    Request { what: String, cause: String },
    #[error("etcd {what} took longer than {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { what: String },
    #[error("the fleet table at {key} has schema version {found:?}; this rewrite reads version {SCHEMA_VERSION} only")]
    Schema { key: String, found: String },
    #[error("fleet key {key}: {why}")]
    BadEntry { key: String, why: String },
    #[error("the fleet table refuses it: {0}")]
    Refused(Refusal),
    #[error("no fleet mapping for VIRTUAL {key}")]
    NoSuchMapping { key: String },
    #[error("no pool {pool:?} in the fleet table (see `rewrite fleet pool list`)")]
    NoSuchPool { pool: String },
    #[error("pool {pool:?} already exists; delete it first to change its prefixes")]
    PoolExists { pool: String },
    #[error("pool prefix {text:?}: {why}")]
    BadPoolPrefix { text: String, why: String },
    #[error("pool {pool:?} has no {family} prefix for REAL {real}")]
    NoPrefixForFamily { pool: String, family: &'static str, real: IpAddr },
    #[error("pool {pool:?} has no free {family} address left for node {node:?}")]
    PoolExhausted { pool: String, family: &'static str, node: String },
    #[error("no claim of {address} in pool {pool:?}")]
    NoSuchClaim { pool: String, address: IpAddr },
    #[error(
        "node id {node:?} is registered by a live agent with REAL {held}, not {ours}: two nodes \
         cannot share an id (give this node its own id; if the node moved, its old \
         registration lapses with its lease)"
    )]
    NodeIdInUse { node: String, held: String, ours: String },
    #[error("etcd ended the watch of the fleet table")]
    WatchEnded,
    #[error("lease {id:x} of this node's registration expired")]
    LeaseLost { id: i64 },
    #[error("the fleet table changed under {attempts} attempts in a row; try again")]
    Contention { attempts: u32 },
}

fn request(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> FleetError {
    let what = what.into();
    move |error| FleetError::Request { what, cause: describe(&error) }
}

/// An etcd client error in one line: gRPC's message, and the deepest cause (which is
/// where "connection refused" or a certificate problem is said).
pub fn describe(error: &etcd_client::Error) -> String {
    let head = match error {
        etcd_client::Error::GRpcStatus(status) => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    };
    let mut deepest: Option<&dyn std::error::Error> = None;
    let mut next = match error {
        etcd_client::Error::GRpcStatus(status) => std::error::Error::source(status),
        other => std::error::Error::source(other),
    };
    while let Some(cause) = next {
        deepest = Some(cause);
        next = cause.source();
    }
    match deepest.map(ToString::to_string) {
        Some(cause) if !head.contains(&cause) => format!("{head} ({cause})"),
        _ => head,
    }
}

/// Runs one etcd request with [`REQUEST_TIMEOUT`].
async fn timed<T>(what: &str, future: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, FleetError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, future).await {
        Ok(result) => result.map_err(request(what)),
        Err(_) => Err(FleetError::Timeout { what: what.to_owned() }),
    }
}

/// How to reach the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    pub endpoints: Vec<String>,
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

/// What an agent follows in etcd, and how it registers its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    pub store: StoreOptions,
    pub node: Option<NodeOptions>,
    /// Longest pause between two attempts to reach etcd.
    pub retry_max: Duration,
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

/// The keys of one cluster's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Result<Self, FleetError> {
        let invalid = |why| FleetError::InvalidPrefix { prefix: prefix.to_owned(), why };
        let trimmed = prefix.trim_end_matches('/');
        if !trimmed.starts_with('/') {
            return Err(invalid("it must start with '/', as in /rewrite/CLUSTER"));
        }
        if trimmed.len() < 2 {
            return Err(invalid("it must name a cluster below the root, as in /rewrite/CLUSTER"));
        }
        if trimmed.split('/').skip(1).any(str::is_empty) || trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("it has an empty segment, whitespace or a control character"));
        }
        Ok(Self { prefix: trimmed.to_owned() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn schema(&self) -> String {
        format!("{}/schema", self.prefix)
    }

    pub fn generation(&self) -> String {
        format!("{}/generation", self.prefix)
    }

    pub fn mappings(&self) -> String {
        format!("{}/mappings/", self.prefix)
    }

    pub fn mapping(&self, key: &str) -> String {
        format!("{}/mappings/{key}", self.prefix)
    }

    pub fn pools(&self) -> String {
        format!("{}/pools/", self.prefix)
    }

    pub fn pool(&self, pool: &str) -> String {
        format!("{}/pools/{pool}", self.prefix)
    }

    pub fn claims(&self, pool: &str) -> String {
        format!("{}/claims/{pool}/", self.prefix)
    }

    pub fn claim(&self, pool: &str, address: IpAddr) -> String {
        format!("{}/claims/{pool}/{address}", self.prefix)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }
}

/// Node ids and pool names become key segments: keep them plain.
pub fn check_name(what: &'static str, name: &str) -> Result<(), FleetError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if (1..=128).contains(&name.len()) && name.chars().all(plain) && name != "." && name != ".." {
        Ok(())
    } else {
        Err(FleetError::InvalidName { what, name: name.to_owned() })
    }
}

/// One mapping of the fleet table, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMapping {
    #[serde(rename = "virtual")]
    pub virtual_side: String,
    #[serde(rename = "real")]
    pub real_side: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The registered node the mapping belongs to, if a node wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A fleet mapping, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetMapping {
    pub spec: MappingSpec,
    pub label: Option<String>,
    pub node: Option<String>,
}

impl FleetMapping {
    fn stored(&self) -> StoredMapping {
        let (virtual_side, real_side) = crate::config::written(&self.spec);
        StoredMapping { virtual_side, real_side, label: self.label.clone(), node: self.node.clone() }
    }
}

/// Reads the mapping stored under `key` (the part after `PREFIX/mappings/`).
pub fn decode_mapping(key: &str, value: &[u8]) -> Result<FleetMapping, String> {
    let stored: StoredMapping = serde_json::from_slice(value).map_err(|error| format!("not a mapping: {error}"))?;
    let spec = MappingSpec::parse(&stored.virtual_side, &stored.real_side).map_err(|error| error.to_string())?;
    let written = key_of(&spec);
    if written != key {
        return Err(format!("the key names {key} but its mapping's VIRTUAL is {written}"));
    }
    Ok(FleetMapping { spec, label: stored.label, node: stored.node })
}

/// The mapping keys of a table read, each decoded or with the reason it cannot be.
pub type Entries = Vec<(String, Result<FleetMapping, String>)>;

/// The fleet table at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub entries: Entries,
    /// The mod revision of the generation key (0 if it does not exist yet).
    generation: i64,
}

impl Snapshot {
    /// The valid mappings admitted in key order, with the refusals of the others.
    pub fn admitted(&self) -> (DesiredTable, Vec<(String, String)>) {
        let mut table = DesiredTable::new(Capacity { addresses: u64::MAX, ports: u64::MAX, prefixes: u64::MAX });
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

/// A pool prefix: `ADDR/LEN` with no host bits set.
pub fn parse_pool_prefix(text: &str) -> Result<(IpAddr, u8), FleetError> {
    let bad = |why: String| FleetError::BadPoolPrefix { text: text.to_owned(), why };
    match text.parse::<Side>() {
        Ok(Side::Prefix { net, len }) => {
            let host_bits = bits(net) - u32::from(len);
            let host_mask = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
            let value = value_of(net);
            if value & host_mask != 0 {
                let network = address_at(net, value & !host_mask);
                return Err(bad(format!("host bits are set; the prefix is {network}/{len}")));
            }
            if first_host(net, len).is_none() {
                return Err(bad("it holds no address a node can use".into()));
            }
            Ok((net, len))
        }
        Ok(_) => Err(bad("a pool is a prefix, ADDR/LEN".into())),
        Err(error) => Err(bad(error.to_string())),
    }
}

/// The addresses of `net/len` a node can be given: not the network address, and for
/// IPv4 prefixes of /30 and wider not the broadcast address either.
fn bits(addr: IpAddr) -> u32 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn value_of(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(addr) => u128::from(u32::from(addr)),
        IpAddr::V6(addr) => u128::from(addr),
    }
}

fn host_range(net: IpAddr, len: u8) -> (u128, u128) {
    let base = value_of(net);
    let host_bits = bits(net) - u32::from(len);
    let size = if host_bits >= 128 { u128::MAX } else { 1u128 << host_bits };
    let last = base + (size - 1);
    match (net, host_bits) {
        (_, 0) => (base, base),
        (IpAddr::V4(_), 1) => (base, last),
        (IpAddr::V4(_), _) => (base + 1, last - 1),
        (IpAddr::V6(_), _) => (base + 1, last),
    }
}

fn first_host(net: IpAddr, len: u8) -> Option<IpAddr> {
    let (first, last) = host_range(net, len);
    (first <= last).then(|| address_at(net, first))
}

fn address_at(family: IpAddr, value: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(value)),
    }
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// The first address of `prefixes` (of `real`'s family) that is not in `taken`.
fn first_free(prefixes: &[(IpAddr, u8)], real: IpAddr, taken: &dyn Fn(IpAddr) -> bool) -> Option<IpAddr> {
    prefixes.iter().filter(|(net, _)| net.is_ipv4() == real.is_ipv4()).find_map(|&(net, len)| {
        let (first, last) = host_range(net, len);
        // Stops at the first free address: at most (claims + 1) steps per prefix.
        (first..=last).map(|value| address_at(net, value)).find(|addr| !taken(*addr))
    })
}

fn contains(prefixes: &[(IpAddr, u8)], addr: IpAddr) -> bool {
    prefixes.iter().any(|&(net, len)| rewrite_common::validate::in_prefix(addr, net, len))
}

/// A connection to one cluster's table.
pub struct Store {
    client: Client,
    layout: Layout,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("layout", &self.layout).finish_non_exhaustive()
    }
}

impl Store {
    /// Connects (with TLS and a user if `options` say so) and checks the schema.
    pub async fn connect(options: &StoreOptions) -> Result<Self, FleetError> {
        let layout = Layout::new(&options.prefix)?;
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(options.keepalive, options.keepalive)
            .with_keep_alive_while_idle(true);
        if options.ca.is_some() || options.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &options.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read("the etcd CA certificate", ca)?));
            }
            match (&options.cert, &options.key) {
                (Some(cert), Some(key)) => {
                    let identity = Identity::from_pem(
                        read("the etcd client certificate", cert)?,
                        read("the etcd client key", key)?,
                    );
                    tls = tls.identity(identity);
                }
                (None, None) => {}
                _ => return Err(FleetError::HalfIdentity),
            }
            connect = connect.with_tls(tls);
        } else if options.key.is_some() {
            return Err(FleetError::HalfIdentity);
        }
        if let Some(user) = &options.user {
            let password = match &options.password_file {
                Some(path) => {
                    let text = String::from_utf8(read("the etcd password file", path)?).unwrap_or_default();
                    text.lines().next().unwrap_or_default().to_owned()
                }
                None => String::new(),
            };
            connect = connect.with_user(user.clone(), password);
        }
        let endpoints = options.endpoints.join(",");
        let connecting = Client::connect(&options.endpoints, Some(connect));
        let client = match tokio::time::timeout(REQUEST_TIMEOUT, connecting).await {
            Ok(result) => {
                result.map_err(|error| FleetError::Connect { endpoints: endpoints.clone(), cause: describe(&error) })?
            }
            Err(_) => return Err(FleetError::Timeout { what: format!("connection to {endpoints}") }),
        };
        let mut store = Self { client, layout };
        // The channel connects lazily: this first request is what proves the store
        // reachable, and it also checks the layout version.
        let schema_key = store.layout.schema();
        let response =
            timed("reading the schema version", store.client.get(schema_key.clone(), None)).await.map_err(|error| {
                match error {
                    FleetError::Request { cause, .. } => FleetError::Connect { endpoints: endpoints.clone(), cause },
                    other => other,
                }
            })?;
        if let Some(found) = response.kvs().first() {
            let found = String::from_utf8_lossy(found.value()).into_owned();
            if found != SCHEMA_VERSION {
                return Err(FleetError::Schema { key: schema_key, found });
            }
        }
        Ok(store)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The underlying client, for the agent's watch and leases.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// All keys under `from` at one revision (the first page's, or `revision`), read
    /// in pages.
    async fn read_range(&mut self, from: &str, revision: Option<i64>) -> Result<(i64, Vec<KeyValue>), FleetError> {
        let end = range_end(from);
        let mut start = from.as_bytes().to_vec();
        let mut revision = revision.unwrap_or(0);
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut response = timed(&format!("reading {from}"), self.client.get(start.clone(), Some(options))).await?;
            if revision == 0 {
                revision = response.header().map_or(0, |header| header.revision());
            }
            let more = response.more();
            let page = response.take_kvs();
            let Some(last) = page.last() else { break };
            // The next page starts just after the last key read.
            start = last.key().to_vec();
            start.push(0);
            kvs.extend(page);
            if !more {
                break;
            }
        }
        Ok((revision, kvs))
    }

    /// The mapping table at the current revision.
    pub async fn snapshot(&mut self) -> Result<Snapshot, FleetError> {
        let generation_key = self.layout.generation();
        let response = timed("reading the generation", self.client.get(generation_key, None)).await?;
        let revision = response.header().map_or(0, |header| header.revision());
        let generation = response.kvs().first().map_or(0, KeyValue::mod_revision);
        let mappings = self.layout.mappings();
        let (revision, kvs) = self.read_range(&mappings, Some(revision)).await?;
        let entries = kvs
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key()[mappings.len()..]).into_owned();
                let entry = decode_mapping(&key, kv.value());
                (key, entry)
            })
            .collect();
        Ok(Snapshot { revision, entries, generation })
    }

    /// Commits `operations` if the table is still at `snapshot`'s generation (and
    /// `compares` hold); also writes the schema version and a new generation.
    async fn commit(
        &mut self,
        snapshot: &Snapshot,
        compares: Vec<Compare>,
        mut operations: Vec<TxnOp>,
    ) -> Result<bool, FleetError> {
        let mut when = vec![Compare::mod_revision(self.layout.generation(), CompareOp::Equal, snapshot.generation)];
        when.extend(compares);
        operations.push(TxnOp::put(self.layout.schema(), SCHEMA_VERSION, None));
        operations.push(TxnOp::put(self.layout.generation(), snapshot.revision.to_string(), None));
        let txn = Txn::new().when(when).and_then(operations);
        let response = timed("committing a change", self.client.txn(txn)).await?;
        Ok(response.succeeded())
    }

    /// Adds or retargets a mapping, checked against the whole table as `apply` checks a
    /// config. Returns what changed.
    pub async fn add(&mut self, mapping: FleetMapping) -> Result<Change, FleetError> {
        for _ in 0..ATTEMPTS {
            let snapshot = self.snapshot().await?;
            let (mut table, _) = snapshot.admitted();
            let change =
                table.admit(mapping.spec, mapping.label.clone(), Source::Fleet).map_err(FleetError::Refused)?;
            let value = serde_json::to_vec(&mapping.stored()).unwrap_or_default();
            let put = TxnOp::put(self.layout.mapping(&key_of(&mapping.spec)), value, None);
            if self.commit(&snapshot, Vec::new(), vec![put]).await? {
                return Ok(change);
            }
        }
        Err(FleetError::Contention { attempts: ATTEMPTS })
    }

    /// Deletes the mapping of VIRTUAL `key` (as `map add` writes it).
    pub async fn delete(&mut self, key: &str) -> Result<FleetMapping, FleetError> {
        for _ in 0..ATTEMPTS {
            let snapshot = self.snapshot().await?;
            let Some((_, entry)) = snapshot.entries.iter().find(|(stored, _)| stored == key) else {
                return Err(FleetError::NoSuchMapping { key: key.to_owned() });
            };
            let removed = entry.clone().map_err(|why| FleetError::BadEntry { key: key.to_owned(), why })?;
            let delete = TxnOp::delete(self.layout.mapping(key), None);
            if self.commit(&snapshot, Vec::new(), vec![delete]).await? {
                return Ok(removed);
            }
        }
        Err(FleetError::Contention { attempts: ATTEMPTS })
    }

    pub async fn pools(&mut self) -> Result<Vec<PoolView>, FleetError> {
        let pools_prefix = self.layout.pools();
        let (revision, kvs) = self.read_range(&pools_prefix, None).await?;
        let mut views = Vec::new();
        for kv in kvs {
            let name = String::from_utf8_lossy(&kv.key()[pools_prefix.len()..]).into_owned();
            let stored: StoredPool = serde_json::from_slice(kv.value())
                .map_err(|error| FleetError::BadEntry { key: name.clone(), why: error.to_string() })?;
            let claims = self.claims(&name, Some(revision)).await?;
            let size = stored
                .prefixes
                .iter()
                .filter_map(|text| parse_pool_prefix(text).ok())
                .map(|(net, len)| {
                    let (first, last) = host_range(net, len);
                    last.saturating_sub(first).saturating_add(1)
                })
                .fold(0u128, u128::saturating_add);
            views.push(PoolView { name, prefixes: stored.prefixes, size, claims });
        }
        Ok(views)
    }

    async fn claims(&mut self, pool: &str, revision: Option<i64>) -> Result<BTreeMap<IpAddr, StoredClaim>, FleetError> {
        let claims_prefix = self.layout.claims(pool);
        let (_, kvs) = self.read_range(&claims_prefix, revision).await?;
        kvs.iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let bad = |why: String| FleetError::BadEntry { key: key.clone(), why };
                let address: IpAddr =
                    key[claims_prefix.len()..].parse().map_err(|_| bad("the key does not end in an address".into()))?;
                let claim = serde_json::from_slice(kv.value()).map_err(|error| bad(error.to_string()))?;
                Ok((address, claim))
            })
            .collect()
    }

    async fn pool(&mut self, pool: &str, revision: i64) -> Result<Vec<(IpAddr, u8)>, FleetError> {
        let options = GetOptions::new().with_revision(revision);
        let response = timed("reading a pool", self.client.get(self.layout.pool(pool), Some(options))).await?;
        let Some(kv) = response.kvs().first() else {
            return Err(FleetError::NoSuchPool { pool: pool.to_owned() });
        };
        let stored: StoredPool = serde_json::from_slice(kv.value())
            .map_err(|error| FleetError::BadEntry { key: self.layout.pool(pool), why: error.to_string() })?;
        stored.prefixes.iter().map(|text| parse_pool_prefix(text)).collect()
    }

    pub async fn pool_add(&mut self, pool: &str, prefixes: &[String]) -> Result<(), FleetError> {
        check_name("pool", pool)?;
        for text in prefixes {
            parse_pool_prefix(text)?;
        }
        let value = serde_json::to_vec(&StoredPool { prefixes: prefixes.to_vec() }).unwrap_or_default();
        let key = self.layout.pool(pool);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None), TxnOp::put(self.layout.schema(), SCHEMA_VERSION, None)]);
        let response = timed("adding a pool", self.client.txn(txn)).await?;
        if response.succeeded() { Ok(()) } else { Err(FleetError::PoolExists { pool: pool.to_owned() }) }
    }

    /// Deletes a pool and its claims; mappings stay until their nodes' leases end (or
    /// `fleet del`).
    pub async fn pool_delete(&mut self, pool: &str) -> Result<usize, FleetError> {
        check_name("pool", pool)?;
        let claims = self.layout.claims(pool);
        let txn = Txn::new().when([Compare::version(self.layout.pool(pool), CompareOp::Greater, 0)]).and_then([
            TxnOp::delete(self.layout.pool(pool), None),
            TxnOp::delete(claims.clone(), Some(etcd_client::DeleteOptions::new().with_range(range_end(&claims)))),
        ]);
        let response = timed("deleting a pool", self.client.txn(txn)).await?;
        if !response.succeeded() {
            return Err(FleetError::NoSuchPool { pool: pool.to_owned() });
        }
        let released = response
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                etcd_client::TxnOpResponse::Delete(deleted) => Some(deleted.deleted()),
                _ => None,
            })
            .sum::<i64>();
        Ok(usize::try_from(released.saturating_sub(1)).unwrap_or(0))
    }

    /// Frees one claimed address of a pool.
    pub async fn pool_release(&mut self, pool: &str, address: IpAddr) -> Result<StoredClaim, FleetError> {
        check_name("pool", pool)?;
        let key = self.layout.claim(pool, address);
        let response = timed(
            "releasing a claim",
            self.client.delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key())),
        )
        .await?;
        let Some(previous) = response.prev_kvs().first() else {
            return Err(FleetError::NoSuchClaim { pool: pool.to_owned(), address });
        };
        serde_json::from_slice(previous.value())
            .map_err(|error| FleetError::BadEntry { key: self.layout.claim(pool, address), why: error.to_string() })
    }

    /// Registers `node`: claims (or finds again) a VIRTUAL address of the pool for each
    /// REAL, and writes the mappings and the node record, all in one transaction, so two
    /// nodes never claim the same address. `node_lease` holds the node record;
    /// `mapping_lease` (if any) holds the mappings. Returns (REAL, VIRTUAL) pairs.
    pub async fn register(
        &mut self,
        node: &NodeOptions,
        node_lease: i64,
        mapping_lease: Option<i64>,
    ) -> Result<Vec<(IpAddr, IpAddr)>, FleetError> {
        check_name("node", &node.id)?;
        check_name("pool", &node.pool)?;
        for _ in 0..ATTEMPTS {
            let snapshot = self.snapshot().await?;
            let prefixes = self.pool(&node.pool, snapshot.revision).await?;
            let claims = self.claims(&node.pool, Some(snapshot.revision)).await?;
            let record_revision = self.check_node_id_free(node, snapshot.revision).await?;
            let (mut table, _) = snapshot.admitted();
            let mut pairs = Vec::new();
            let mut new_claims = BTreeSet::new();
            let mut reused = BTreeSet::new();
            for &real in &node.reals {
                if !prefixes.iter().any(|(net, _)| net.is_ipv4() == real.is_ipv4()) {
                    return Err(FleetError::NoPrefixForFamily { pool: node.pool.clone(), family: family(real), real });
                }
                // This node's claims of the family, the one made for this very REAL
                // first (a node with two REALs of a family keeps each one's VIRTUAL);
                // a claim made for another REAL follows the node to its new REAL.
                let ours = claims
                    .iter()
                    .filter(|(address, claim)| {
                        claim.node == node.id
                            && address.is_ipv4() == real.is_ipv4()
                            && contains(&prefixes, **address)
                            && !reused.contains(*address)
                    })
                    .min_by_key(|(_, claim)| claim.real != real);
                let virtual_addr = match ours {
                    Some((address, _)) => {
                        reused.insert(*address);
                        *address
                    }
                    None => {
                        // Free: unclaimed, and not the VIRTUAL of a mapping someone wrote.
                        let taken = |addr: IpAddr| {
                            claims.contains_key(&addr)
                                || new_claims.contains(&addr)
                                || table.contains(&addr.to_string())
                        };
                        let found = first_free(&prefixes, real, &taken).ok_or_else(|| FleetError::PoolExhausted {
                            pool: node.pool.clone(),
                            family: family(real),
                            node: node.id.clone(),
                        })?;
                        new_claims.insert(found);
                        found
                    }
                };
                let spec = MappingSpec::Address { virtual_addr, real_addr: real };
                table.admit(spec, Some(node.id.clone()), Source::Fleet).map_err(FleetError::Refused)?;
                pairs.push((real, virtual_addr));
            }
            // Two agents registering one id at once: only the first commits.
            let mut compares =
                vec![Compare::mod_revision(self.layout.node(&node.id), CompareOp::Equal, record_revision)];
            let mut operations = Vec::new();
            for (real, virtual_addr) in &pairs {
                let claim_key = self.layout.claim(&node.pool, *virtual_addr);
                if new_claims.contains(virtual_addr) {
                    // The address must still be unclaimed when the transaction commits.
                    compares.push(Compare::version(claim_key.clone(), CompareOp::Equal, 0));
                    let claim = StoredClaim { node: node.id.clone(), real: *real };
                    operations.push(TxnOp::put(claim_key, serde_json::to_vec(&claim).unwrap_or_default(), None));
                }
                let mapping = FleetMapping {
                    spec: MappingSpec::Address { virtual_addr: *virtual_addr, real_addr: *real },
                    label: Some(node.id.clone()),
                    node: Some(node.id.clone()),
                };
                let options = mapping_lease.map(|lease| PutOptions::new().with_lease(lease));
                let value = serde_json::to_vec(&mapping.stored()).unwrap_or_default();
                operations.push(TxnOp::put(self.layout.mapping(&virtual_addr.to_string()), value, options));
            }
            let record = StoredNode {
                real: node.reals.clone(),
                virtual_addrs: pairs.iter().map(|(_, virtual_addr)| *virtual_addr).collect(),
                pool: node.pool.clone(),
            };
            operations.push(TxnOp::put(
                self.layout.node(&node.id),
                serde_json::to_vec(&record).unwrap_or_default(),
                Some(PutOptions::new().with_lease(node_lease)),
            ));
            if self.commit(&snapshot, compares, operations).await? {
                return Ok(pairs);
            }
            // Someone else committed first: read again. A short random pause keeps two
            // racing nodes from colliding again and again.
            tokio::time::sleep(Duration::from_millis(u64::from(std::process::id() % 20) + 1)).await;
        }
        Err(FleetError::Contention { attempts: ATTEMPTS })
    }

    /// Refuses `node`'s id while a live agent (its record exists as long as its lease
    /// does) registered it with other REAL addresses: a second machine given the same
    /// id (a cloned image, a typo) must not take the first one's VIRTUAL while it lives.
    /// The same REALs are the same node restarting. Returns the record's mod revision
    /// (0 without a record), for the commit to check.
    async fn check_node_id_free(&mut self, node: &NodeOptions, revision: i64) -> Result<i64, FleetError> {
        let key = self.layout.node(&node.id);
        let options = GetOptions::new().with_revision(revision);
        let response = timed("reading the node record", self.client.get(key.clone(), Some(options))).await?;
        let Some(kv) = response.kvs().first() else { return Ok(0) };
        let record: StoredNode = serde_json::from_slice(kv.value())
            .map_err(|error| FleetError::BadEntry { key: key.clone(), why: error.to_string() })?;
        let sorted = |reals: &[IpAddr]| reals.iter().copied().collect::<BTreeSet<_>>();
        if sorted(&record.real) != sorted(&node.reals) {
            let list = |reals: &[IpAddr]| reals.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            return Err(FleetError::NodeIdInUse {
                node: node.id.clone(),
                held: list(&record.real),
                ours: list(&node.reals),
            });
        }
        Ok(kv.mod_revision())
    }

    /// A lease of `ttl`, for a registration.
    pub async fn grant(&mut self, ttl: Duration) -> Result<i64, FleetError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        Ok(timed("granting a lease", self.client.lease_grant(seconds, None)).await?.id())
    }

    /// A watch of the mapping keys from `revision` on.
    pub async fn watch_mappings(&mut self, revision: i64) -> Result<etcd_client::WatchStream, FleetError> {
        let options = WatchOptions::new().with_prefix().with_start_revision(revision);
        timed("starting a watch", self.client.watch(self.layout.mappings(), Some(options))).await
    }
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::ReadFile { what, path: path.to_owned(), source })
}

/// The end of the key range of every key that starts with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn pools_hand_out_host_addresses_in_order() {
        let pool = [parse_pool_prefix("100.64.0.0/30").expect("pool"), parse_pool_prefix("fd00::/127").expect("pool")];
        let v4: IpAddr = "192.0.2.1".parse().expect("address");
        let nothing_taken = |_: IpAddr| false;
        assert_eq!(first_free(&pool, v4, &nothing_taken), Some("100.64.0.1".parse().expect("address")));
        let first_taken = |addr: IpAddr| addr == "100.64.0.1".parse::<IpAddr>().expect("address");
        assert_eq!(first_free(&pool, v4, &first_taken), Some("100.64.0.2".parse().expect("address")));
        let all_taken = |_: IpAddr| true;
        assert_eq!(first_free(&pool, v4, &all_taken), None, "the broadcast address is never handed out");
        let v6: IpAddr = "2001:db8::1".parse().expect("address");
        assert_eq!(first_free(&pool, v6, &nothing_taken), Some("fd00::1".parse().expect("address")));
        assert!(parse_pool_prefix("100.64.0.1/24").is_err(), "host bits set");
        assert!(parse_pool_prefix("100.64.0.1").is_err(), "not a prefix");
        assert_eq!(
            parse_pool_prefix("100.64.0.7/32").map(|(net, _)| net.to_string()).ok().as_deref(),
            Some("100.64.0.7")
        );
        assert_eq!("90s".parse(), Ok(MappingExpiry::After(Duration::from_secs(90))));
        assert_eq!("2h".parse(), Ok(MappingExpiry::After(Duration::from_secs(7200))));
        assert_eq!("never".parse(), Ok(MappingExpiry::Never));
        assert!("0s".parse::<MappingExpiry>().is_err() && "5 m".parse::<MappingExpiry>().is_err());
        assert_eq!(range_end("/a/"), b"/a0".to_vec());
    }
}
