//! Registering a node: claiming a VIRTUAL address of its pool for each of its REAL
//! addresses, and writing its mappings and its record, in one transaction.
//!
//! Registration reads only what concerns the node, never the whole table or the whole
//! pool, so that thousands of nodes starting at once do not each read everything: its
//! record, its pool, its own claims (through the `holders/POOL/NODE/` index), and, for an
//! address it does not hold yet, a few candidates. Candidates are walked from a point
//! given by a hash of the node id, so that nodes starting together try different
//! addresses instead of all racing for the lowest free one. The commit checks exactly
//! what was read (the record unchanged, each new address still unclaimed and not the
//! VIRTUAL of a mapping), so registrations of different nodes never undo each other;
//! it also bumps the generation, so a `fleet add` checked against a table read before it
//! is checked again.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use etcd_client::{Compare, CompareOp, GetOptions, GetResponse, PutOptions, Txn, TxnOp, TxnOpResponse};
use rewrite_common::{prefix::Prefix, spec::MappingSpec};

use crate::fleet::{
    error::{FleetError, timed},
    layout::{check_name, range_end},
    options::NodeOptions,
    pool::{candidates, contains, decode_claim, family, parse_pool_prefix},
    schema::{FleetMapping, StoredClaim, StoredNode, StoredPool},
    store::{ATTEMPTS, Store},
};

/// Candidate addresses checked per request while looking for a free one (two reads
/// each, below etcd's default of 128 operations per transaction).
const CANDIDATES_PER_READ: usize = 32;

/// The leases a registration writes its keys with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leases {
    /// Holds the node record: it exists while the agent lives.
    pub node: i64,
    /// Holds the node's mappings, if they expire (see `MappingExpiry`).
    pub mappings: Option<i64>,
    /// Holds the node's claims and their index, if they go back to the pool.
    pub claims: Option<i64>,
}

/// What registration reads of the node and its pool, at one revision.
struct NodeView {
    /// The record's mod revision (0 without a record), for the commit to check.
    record_revision: i64,
    prefixes: Vec<Prefix>,
    /// The addresses this node holds in the pool, with the REAL each was claimed for and
    /// the revision its claim was written at (the claim and its holder key are always
    /// written together, so they share it).
    held: Vec<(IpAddr, StoredClaim, i64)>,
}

impl Store {
    /// Registers `node`: claims (or finds again) a VIRTUAL address of the pool for each
    /// REAL, and writes the claims, the mappings and the node record, all in one
    /// transaction, so two nodes never claim the same address, with `leases`. Returns
    /// (REAL, VIRTUAL) pairs.
    pub async fn register(&mut self, node: &NodeOptions, leases: Leases) -> Result<Vec<(IpAddr, IpAddr)>, FleetError> {
        check_name("node", &node.id)?;
        check_name("pool", &node.pool)?;
        for attempt in 0..ATTEMPTS {
            let view = self.node_view(node).await?;
            let mut pairs = Vec::new();
            let mut new_claims = BTreeSet::new();
            let mut reused = BTreeSet::new();
            for (ordinal, &real) in node.reals.iter().enumerate() {
                if !view.prefixes.iter().any(|prefix| prefix.is_ipv4() == real.is_ipv4()) {
                    return Err(FleetError::NoPrefixForFamily { pool: node.pool.clone(), family: family(real), real });
                }
                // This node's claims of the family, the one made for this very REAL
                // first (a node with two REALs of a family keeps each one's VIRTUAL);
                // a claim made for another REAL follows the node to its new REAL.
                let ours = view
                    .held
                    .iter()
                    .filter(|(address, _, _)| {
                        address.is_ipv4() == real.is_ipv4()
                            && contains(&view.prefixes, *address)
                            && !reused.contains(address)
                    })
                    .min_by_key(|(_, claim, _)| claim.real != real);
                let virtual_addr = match ours {
                    Some((address, _, _)) => {
                        reused.insert(*address);
                        *address
                    }
                    None => {
                        let seed = seed(&node.id, ordinal, attempt);
                        let found = self.free_address(node, &view.prefixes, real, seed, &new_claims).await?;
                        new_claims.insert(found);
                        found
                    }
                };
                pairs.push((real, virtual_addr));
            }
            if self.commit_registration(node, &view, &pairs, &new_claims, leases).await? {
                return Ok(pairs);
            }
            // Another writer took an address first, or another agent registered this id:
            // read again. A short random pause keeps two racing nodes apart.
            tokio::time::sleep(Duration::from_millis(u64::from(std::process::id() % 20) + 1)).await;
        }
        Err(FleetError::Contention { attempts: ATTEMPTS })
    }

    /// The node's record, its pool and its claims, read at one revision. Refuses the id
    /// while a live agent (its record exists as long as its lease does) registered it
    /// with other REAL addresses: a second machine given the same id (a cloned image, a
    /// typo) must not take the first one's VIRTUAL while it lives. The same REALs are
    /// the same node restarting.
    async fn node_view(&mut self, node: &NodeOptions) -> Result<NodeView, FleetError> {
        let holders = self.layout.holders(&node.pool, &node.id);
        let read = Txn::new().and_then([
            TxnOp::get(self.layout.node(&node.id), None),
            TxnOp::get(self.layout.pool(&node.pool), None),
            TxnOp::get(holders.clone(), Some(GetOptions::new().with_range(range_end(&holders)))),
        ]);
        let response = timed("reading the node's registration", self.client.txn(read)).await?;
        let [record, pool, held] = gets(response.op_responses()).try_into().map_err(|_| FleetError::Request {
            what: "reading the node's registration".into(),
            cause: "short reply".into(),
        })?;

        let record_revision = match record.kvs().first() {
            None => 0,
            Some(kv) => {
                let key = self.layout.node(&node.id);
                let stored: StoredNode = serde_json::from_slice(kv.value())
                    .map_err(|error| FleetError::BadEntry { key, why: error.to_string() })?;
                let sorted = |reals: &[IpAddr]| reals.iter().copied().collect::<BTreeSet<_>>();
                if sorted(&stored.real) != sorted(&node.reals) {
                    let list = |reals: &[IpAddr]| reals.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
                    return Err(FleetError::NodeIdInUse {
                        node: node.id.clone(),
                        held: list(&stored.real),
                        ours: list(&node.reals),
                    });
                }
                kv.mod_revision()
            }
        };
        let Some(pool_kv) = pool.kvs().first() else {
            return Err(FleetError::NoSuchPool { pool: node.pool.clone() });
        };
        let stored: StoredPool = serde_json::from_slice(pool_kv.value())
            .map_err(|error| FleetError::BadEntry { key: self.layout.pool(&node.pool), why: error.to_string() })?;
        let prefixes = stored.prefixes.iter().map(|text| parse_pool_prefix(text)).collect::<Result<Vec<_>, _>>()?;
        let held = held
            .kvs()
            .iter()
            .map(|kv| decode_claim(&holders, kv).map(|(address, claim)| (address, claim, kv.mod_revision())))
            .collect::<Result<Vec<_>, FleetError>>()?;
        Ok(NodeView { record_revision, prefixes, held })
    }

    /// The first address from `seed` on in the pool's `real`-family prefixes that is
    /// neither claimed nor the VIRTUAL of a mapping someone wrote (nor in `taken`).
    async fn free_address(
        &mut self,
        node: &NodeOptions,
        prefixes: &[Prefix],
        real: IpAddr,
        seed: u64,
        taken: &BTreeSet<IpAddr>,
    ) -> Result<IpAddr, FleetError> {
        let mut walk = candidates(prefixes, real, seed).filter(|addr| !taken.contains(addr));
        loop {
            let batch: Vec<IpAddr> = walk.by_ref().take(CANDIDATES_PER_READ).collect();
            if batch.is_empty() {
                return Err(FleetError::PoolExhausted {
                    pool: node.pool.clone(),
                    family: family(real),
                    node: node.id.clone(),
                });
            }
            let count = || Some(GetOptions::new().with_count_only());
            let reads: Vec<TxnOp> = batch
                .iter()
                .flat_map(|addr| {
                    [
                        TxnOp::get(self.layout.claim(&node.pool, *addr), count()),
                        TxnOp::get(self.layout.mapping(&addr.to_string()), count()),
                    ]
                })
                .collect();
            let response = timed("reading candidate addresses", self.client.txn(Txn::new().and_then(reads))).await?;
            let counts: Vec<i64> = gets(response.op_responses()).iter().map(GetResponse::count).collect();
            if let Some(found) = batch
                .iter()
                .zip(counts.chunks(2))
                .find_map(|(addr, counts)| (counts.iter().all(|count| *count == 0)).then_some(*addr))
            {
                return Ok(found);
            }
        }
    }

    /// Writes the registration if nothing it read has changed. Returns whether it did.
    async fn commit_registration(
        &mut self,
        node: &NodeOptions,
        view: &NodeView,
        pairs: &[(IpAddr, IpAddr)],
        new_claims: &BTreeSet<IpAddr>,
        leases: Leases,
    ) -> Result<bool, FleetError> {
        // Two agents registering one id at once: only the first commits.
        let mut compares =
            vec![Compare::mod_revision(self.layout.node(&node.id), CompareOp::Equal, view.record_revision)];
        let mut operations = Vec::new();
        for (real, virtual_addr) in pairs {
            let claim = serde_json::to_vec(&StoredClaim { node: node.id.clone(), real: *real }).unwrap_or_default();
            let holder = self.layout.holder(&node.pool, &node.id, *virtual_addr);
            let claim_key = self.layout.claim(&node.pool, *virtual_addr);
            if new_claims.contains(virtual_addr) {
                // The address must still be unclaimed, and nobody's VIRTUAL, at commit.
                compares.push(Compare::version(claim_key.clone(), CompareOp::Equal, 0));
                compares.push(Compare::version(self.layout.mapping(&virtual_addr.to_string()), CompareOp::Equal, 0));
            } else {
                // A claim this node holds must still be the one it read (released, it
                // may be someone else's by now); it is written again for its REAL and
                // its lease, which moves it to this registration's lease.
                let written = view.held.iter().find(|(address, _, _)| address == virtual_addr).map_or(0, |held| held.2);
                compares.push(Compare::mod_revision(claim_key.clone(), CompareOp::Equal, written));
            }
            let claim_options = leases.claims.map(|lease| PutOptions::new().with_lease(lease));
            operations.push(TxnOp::put(claim_key, claim.clone(), claim_options.clone()));
            operations.push(TxnOp::put(holder, claim, claim_options));
            let mapping = FleetMapping::new(
                MappingSpec::Address { virtual_addr: *virtual_addr, real_addr: *real },
                Some(node.id.clone()),
                Some(node.id.clone()),
            );
            let options = leases.mappings.map(|lease| PutOptions::new().with_lease(lease));
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
            Some(PutOptions::new().with_lease(leases.node)),
        ));
        self.commit_unchecked(compares, operations).await
    }
}

/// The get replies of a transaction, in order.
fn gets(responses: Vec<TxnOpResponse>) -> Vec<GetResponse> {
    responses
        .into_iter()
        .filter_map(|response| match response {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        })
        .collect()
}

/// Where a node's walk through the pool starts: FNV-1a of its id, the REAL's place in
/// its list and the attempt (so that a node that lost a race starts elsewhere).
fn seed(node: &str, ordinal: usize, attempt: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = node.bytes().chain((ordinal as u64).to_le_bytes()).chain(u64::from(attempt).to_le_bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
