//! Address pools: the prefixes a pool hands VIRTUAL addresses out of, and the
//! arithmetic of picking the first free one.

use std::{collections::BTreeMap, net::IpAddr};

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use rewrite_common::prefix::Prefix;

use crate::fleet::{
    error::{FleetError, timed},
    layout::{SCHEMA_VERSION, check_name, range_end},
    schema::{PoolView, StoredClaim, StoredPool},
    store::Store,
};

/// A pool prefix: `ADDR/LEN` with no host bits set, holding at least one address a node
/// can be given.
pub fn parse_pool_prefix(text: &str) -> Result<Prefix, FleetError> {
    let bad = |why: String| FleetError::BadPoolPrefix { text: text.to_owned(), why };
    let prefix: Prefix = text.parse().map_err(|error| bad(format!("a pool is a prefix, ADDR/LEN: {error}")))?;
    if prefix.has_host_bits() {
        return Err(bad(format!("host bits are set; the prefix is {}", prefix.masked())));
    }
    if prefix.host_count() == 0 {
        return Err(bad("it holds no address a node can use".into()));
    }
    Ok(prefix)
}

pub(crate) fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// The first address a node can be given in `prefixes` (of `real`'s family) that is
/// not `taken`: the network address and (IPv4) the broadcast address are never handed
/// out (see [`Prefix::host_numbers`]).
pub(crate) fn first_free(prefixes: &[Prefix], real: IpAddr, taken: &dyn Fn(IpAddr) -> bool) -> Option<IpAddr> {
    prefixes.iter().filter(|prefix| prefix.is_ipv4() == real.is_ipv4()).find_map(|prefix| {
        let (first, last) = prefix.host_numbers()?;
        // Stops at the first free address: at most (claims + 1) steps per prefix.
        (first..=last).map(|value| prefix.address(value)).find(|addr| !taken(*addr))
    })
}

pub(crate) fn contains(prefixes: &[Prefix], addr: IpAddr) -> bool {
    prefixes.iter().any(|prefix| prefix.contains(addr))
}

impl Store {
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
                .map(Prefix::host_count)
                .fold(0u128, u128::saturating_add);
            views.push(PoolView { name, prefixes: stored.prefixes, size, claims });
        }
        Ok(views)
    }

    pub(crate) async fn claims(
        &mut self,
        pool: &str,
        revision: Option<i64>,
    ) -> Result<BTreeMap<IpAddr, StoredClaim>, FleetError> {
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

    pub(crate) async fn pool(&mut self, pool: &str, revision: i64) -> Result<Vec<Prefix>, FleetError> {
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
            TxnOp::delete(claims.clone(), Some(DeleteOptions::new().with_range(range_end(&claims)))),
        ]);
        let response = timed("deleting a pool", self.client.txn(txn)).await?;
        if !response.succeeded() {
            return Err(FleetError::NoSuchPool { pool: pool.to_owned() });
        }
        let released = response
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                TxnOpResponse::Delete(deleted) => Some(deleted.deleted()),
                _ => None,
            })
            .sum::<i64>();
        Ok(usize::try_from(released.saturating_sub(1)).unwrap_or(0))
    }

    /// Frees one claimed address of a pool.
    pub async fn pool_release(&mut self, pool: &str, address: IpAddr) -> Result<StoredClaim, FleetError> {
        check_name("pool", pool)?;
        let key = self.layout.claim(pool, address);
        let response =
            timed("releasing a claim", self.client.delete(key, Some(DeleteOptions::new().with_prev_key()))).await?;
        let Some(previous) = response.prev_kvs().first() else {
            return Err(FleetError::NoSuchClaim { pool: pool.to_owned(), address });
        };
        serde_json::from_slice(previous.value())
            .map_err(|error| FleetError::BadEntry { key: self.layout.claim(pool, address), why: error.to_string() })
    }
}
