//! A connection to one cluster's table: reading it whole at one revision, optimistic
//! writes (every change made through rewrite bumps the generation key), mappings, leases
//! and the watch.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions, Txn, TxnOp,
    WatchOptions,
};

use crate::{
    fleet::{
        error::{FleetError, REQUEST_TIMEOUT, describe, timed},
        layout::{Layout, SCHEMA_VERSION, range_end},
        options::StoreOptions,
        schema::{FleetMapping, Snapshot, decode_mapping},
    },
    table::admission::{Change, Source},
};

/// Keys read per request while the table is read whole: far below gRPC's 4 MiB message
/// limit at ~150 bytes per key, and few round trips for 100,000 keys.
const PAGE: i64 = 10_000;

/// Optimistic writes tried before giving up on a table that keeps changing.
pub(crate) const ATTEMPTS: u32 = 50;

/// A connection to one cluster's table.
pub struct Store {
    pub(super) client: Client,
    pub(super) layout: Layout,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("layout", &self.layout).finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::ReadFile { what, path: path.to_owned(), source })
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
                return Err(FleetError::Schema { key: schema_key, found, expected: SCHEMA_VERSION });
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
    pub(crate) async fn read_range(
        &mut self,
        from: &str,
        revision: Option<i64>,
    ) -> Result<(i64, Vec<KeyValue>), FleetError> {
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
    pub(crate) async fn commit(
        &mut self,
        snapshot: &Snapshot,
        compares: Vec<Compare>,
        operations: Vec<TxnOp>,
    ) -> Result<bool, FleetError> {
        let mut when = vec![Compare::mod_revision(self.layout.generation(), CompareOp::Equal, snapshot.generation)];
        when.extend(compares);
        self.commit_unchecked(when, operations).await
    }

    /// Commits `operations` if `compares` hold, whatever the generation (a registration
    /// checks exactly the keys it read); also writes the schema version and a new
    /// generation, so that a change checked against a table read before this one is
    /// checked again.
    pub(crate) async fn commit_unchecked(
        &mut self,
        compares: Vec<Compare>,
        mut operations: Vec<TxnOp>,
    ) -> Result<bool, FleetError> {
        // Only the generation key's revision counts; its value says nothing.
        operations.push(TxnOp::put(self.layout.schema(), SCHEMA_VERSION, None));
        operations.push(TxnOp::put(self.layout.generation(), "", None));
        let txn = Txn::new().when(compares).and_then(operations);
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
            let put = TxnOp::put(self.layout.mapping(&mapping.spec.key().to_string()), value, None);
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
