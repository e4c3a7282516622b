//! Address pools: the prefixes a pool hands VIRTUAL addresses out of, and the
//! arithmetic of picking the first free one.

use std::{collections::BTreeMap, net::IpAddr};

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp, TxnOpResponse};
use rewrite_common::prefix::Prefix;

use crate::fleet::{
    error::{FleetError, timed},
    layout::{SCHEMA_VERSION, check_name, range_end},
    schema::{PoolView, StoredClaim, StoredPool},
    store::{ATTEMPTS, Store},
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

/// The addresses a node can be given in `prefixes` (of `real`'s family), every one once,
/// starting at the one `seed` picks and wrapping around: the network address and (IPv4)
/// the broadcast address are never handed out (see [`Prefix::host_numbers`]).
pub(crate) fn candidates(prefixes: &[Prefix], real: IpAddr, seed: u64) -> impl Iterator<Item = IpAddr> {
    let ranges: Vec<(Prefix, u128, u128)> = prefixes
        .iter()
        .filter(|prefix| prefix.is_ipv4() == real.is_ipv4())
        .filter_map(|prefix| prefix.host_numbers().map(|(first, last)| (*prefix, first, last - first + 1)))
        .collect();
    let total = ranges.iter().fold(0u128, |sum, (_, _, count)| sum.saturating_add(*count));
    let start = if total == 0 { 0 } else { u128::from(seed) % total };
    (0..total).map(move |step| {
        // (start + step) mod total, without overflowing near u128::MAX.
        let mut offset = if step < total - start { start + step } else { step - (total - start) };
        for (prefix, first, count) in &ranges {
            if offset < *count {
                return prefix.address(first + offset);
            }
            offset -= count;
        }
        unreachable!("an offset below the total lies in one of the ranges")
    })
}

/// A claim key under `prefix` (`claims/POOL/` or a node's `holders/POOL/NODE/`): the
/// address its name ends in, and the claim it holds.
pub(crate) fn decode_claim(prefix: &str, kv: &etcd_client::KeyValue) -> Result<(IpAddr, StoredClaim), FleetError> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let bad = |why: String| FleetError::BadEntry { key: key.clone(), why };
    let address: IpAddr = key
        .get(prefix.len()..)
        .and_then(|name| name.parse().ok())
        .ok_or_else(|| bad("the key does not end in an address".into()))?;
    let claim = serde_json::from_slice(kv.value()).map_err(|error| bad(error.to_string()))?;
    Ok((address, claim))
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
        kvs.iter().map(|kv| decode_claim(&claims_prefix, kv)).collect()
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
        let holders = self.layout.pool_holders(pool);
        let txn = Txn::new().when([Compare::version(self.layout.pool(pool), CompareOp::Greater, 0)]).and_then([
            TxnOp::delete(claims.clone(), Some(DeleteOptions::new().with_range(range_end(&claims)))),
            TxnOp::delete(self.layout.pool(pool), None),
            TxnOp::delete(holders.clone(), Some(DeleteOptions::new().with_range(range_end(&holders)))),
        ]);
        let response = timed("deleting a pool", self.client.txn(txn)).await?;
        if !response.succeeded() {
            return Err(FleetError::NoSuchPool { pool: pool.to_owned() });
        }
        // The first operation's count: the claims released.
        let released = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(deleted) => Some(deleted.deleted()),
            _ => None,
        });
        Ok(usize::try_from(released.unwrap_or(0)).unwrap_or(0))
    }

    /// Frees one claimed address of a pool (its claim and its holder key, together).
    pub async fn pool_release(&mut self, pool: &str, address: IpAddr) -> Result<StoredClaim, FleetError> {
        check_name("pool", pool)?;
        let key = self.layout.claim(pool, address);
        for _ in 0..ATTEMPTS {
            let response = timed("reading a claim", self.client.get(key.clone(), None)).await?;
            let Some(kv) = response.kvs().first() else {
                return Err(FleetError::NoSuchClaim { pool: pool.to_owned(), address });
            };
            let claim: StoredClaim = serde_json::from_slice(kv.value())
                .map_err(|error| FleetError::BadEntry { key: key.clone(), why: error.to_string() })?;
            let txn =
                Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())]).and_then([
                    TxnOp::delete(key.clone(), None),
                    TxnOp::delete(self.layout.holder(pool, &claim.node, address), None),
                ]);
            if timed("releasing a claim", self.client.txn(txn)).await?.succeeded() {
                return Ok(claim);
            }
        }
        Err(FleetError::Contention { attempts: ATTEMPTS })
    }
}
