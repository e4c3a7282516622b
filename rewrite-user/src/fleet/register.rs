//! Registering a node: claiming a VIRTUAL address of its pool for each of its REAL
//! addresses, and writing its mappings and its record, in one transaction.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, TxnOp};
use rewrite_common::spec::{MappingKey, MappingSpec, Side};

use crate::{
    fleet::{
        error::{FleetError, timed},
        layout::check_name,
        options::NodeOptions,
        pool::{contains, family, first_free},
        schema::{FleetMapping, StoredClaim, StoredNode},
        store::{ATTEMPTS, Store},
    },
    table::admission::Source,
};

impl Store {
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
                if !prefixes.iter().any(|prefix| prefix.is_ipv4() == real.is_ipv4()) {
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
                                || table.contains(&MappingKey(Side::Address(addr)))
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
}
