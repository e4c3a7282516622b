//! The agent's two etcd tasks: following the fleet table, and keeping this node's
//! registration alive. Neither touches the maps: they send [`Update`]s to the agent's
//! main loop, which is the only writer, so a fleet change and a config change never
//! interleave their map writes.
//!
//! Following is a full read of the table at one revision, then a watch from the next
//! revision: no change can fall between the two. Any failure ends the watch; the task
//! waits (100 ms, doubling up to the configured maximum, with jitter) and starts over
//! with a full read, which is also what a watch cancelled by compaction gets.

use std::{net::IpAddr, time::Duration};

use etcd_client::EventType;
use tokio::sync::mpsc::UnboundedSender;

use crate::fleet::{
    Entries, FleetError, FleetMapping, Leases, MappingExpiry, NodeOptions, Store, StoreOptions, decode_mapping,
    describe,
};

/// One fleet mapping key that changed: its new mapping (or why it is not one), or
/// `None` if it was deleted.
pub type KeyChange = (String, Option<Result<FleetMapping, String>>);

#[derive(Debug)]
pub enum Update {
    /// The whole table at `revision`; `reason` says why it was read (start, reconnect,
    /// compaction).
    Snapshot { revision: i64, entries: Entries, reason: &'static str },
    /// Changes committed at `revision`, in commit order.
    Changes { revision: i64, changes: Vec<KeyChange> },
    /// The connection to etcd is lost; the task retries.
    Disconnected { error: String },
    /// This node holds these (REAL, VIRTUAL) pairs.
    Registered { pairs: Vec<(IpAddr, IpAddr)> },
    /// Registration failed (or its lease was lost); the task retries.
    RegistrationFailed { error: String },
}

/// Exponential backoff with jitter, from 100 ms up to `max`.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);

impl Backoff {
    fn new(max: Duration) -> Self {
        let seed = u64::from(std::process::id())
            ^ u64::from(std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |since| since.subsec_nanos()));
        Self { next: FIRST_PAUSE, max, seed }
    }

    fn reset(&mut self) {
        self.next = FIRST_PAUSE;
    }

    /// The pause before the next attempt: the current step, give or take a quarter (so
    /// that a fleet of agents does not reconnect in lockstep after an outage).
    fn pause(&mut self) -> Duration {
        self.seed = self.seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let jitter = 0.75 + f64::from(u32::try_from(self.seed >> 40).unwrap_or(0)) / f64::from(1u32 << 24) / 2.0;
        let pause = self.next.mul_f64(jitter).min(self.max);
        self.next = (self.next * 2).min(self.max);
        pause
    }
}

/// Why a watch ended without an error.
enum WatchEnd {
    /// The revision to watch from is compacted away: read the table again.
    Compacted,
}

/// Follows the table until the receiver of `updates` is gone.
pub async fn follow_table(options: StoreOptions, retry_max: Duration, updates: UnboundedSender<Update>) {
    let mut backoff = Backoff::new(retry_max);
    let mut reason = "start";
    while !updates.is_closed() {
        match follow_once(&options, reason, &updates, &mut backoff).await {
            Ok(WatchEnd::Compacted) => reason = "compaction",
            Err(error) => {
                let _ = updates.send(Update::Disconnected { error: error.to_string() });
                reason = "reconnect";
                tokio::time::sleep(backoff.pause()).await;
            }
        }
    }
}

async fn follow_once(
    options: &StoreOptions,
    reason: &'static str,
    updates: &UnboundedSender<Update>,
    backoff: &mut Backoff,
) -> Result<WatchEnd, FleetError> {
    let mut store = Store::connect(options).await?;
    let snapshot = store.snapshot().await?;
    let revision = snapshot.revision;
    let _ = updates.send(Update::Snapshot { revision, entries: snapshot.entries, reason });
    backoff.reset();
    let mut stream = store.watch_mappings(revision + 1).await?;
    let prefix_len = store.layout().mappings().len();
    loop {
        let response = stream
            .message()
            .await
            .map_err(|error| FleetError::Request { what: "watch".into(), cause: describe(&error) })?
            .ok_or(FleetError::WatchEnded)?;
        if response.compact_revision() > 0 || response.canceled() {
            return Ok(WatchEnd::Compacted);
        }
        if response.events().is_empty() {
            continue;
        }
        let revision = response.header().map_or(0, |header| header.revision());
        let changes = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                let key = String::from_utf8_lossy(kv.key().get(prefix_len..)?).into_owned();
                let mapping = match event.event_type() {
                    EventType::Put => Some(decode_mapping(&key, kv.value())),
                    EventType::Delete => None,
                };
                Some((key, mapping))
            })
            .collect();
        if updates.send(Update::Changes { revision, changes }).is_err() {
            return Err(FleetError::WatchEnded);
        }
    }
}

/// Registers `node` and keeps its leases alive; registers again (same claims) after any
/// failure, until the receiver of `updates` is gone.
pub async fn keep_registered(
    options: StoreOptions,
    node: NodeOptions,
    retry_max: Duration,
    updates: UnboundedSender<Update>,
) {
    let mut backoff = Backoff::new(retry_max);
    while !updates.is_closed() {
        let error = register_and_renew(&options, &node, &updates, &mut backoff).await;
        let _ = updates.send(Update::RegistrationFailed { error: error.to_string() });
        tokio::time::sleep(backoff.pause()).await;
    }
}

/// Returns only when something failed.
async fn register_and_renew(
    options: &StoreOptions,
    node: &NodeOptions,
    updates: &UnboundedSender<Update>,
    backoff: &mut Backoff,
) -> FleetError {
    let attempt = async {
        let mut store = Store::connect(options).await?;
        let node_lease = store.grant(node.lease_ttl).await?;
        let mapping_lease = match node.expiry {
            MappingExpiry::WithLease => Some(node_lease),
            MappingExpiry::After(grace) => Some(store.grant(node.lease_ttl + grace).await?),
            MappingExpiry::Never => None,
        };
        // A claim that goes back to the pool is held by a lease that outlives the node's
        // by the release delay, renewed with it: never released while the node lives.
        let claim_lease = match node.release_claim_after {
            Some(after) => Some(store.grant(node.lease_ttl + after).await?),
            None => None,
        };
        let pairs =
            store.register(node, Leases { node: node_lease, mappings: mapping_lease, claims: claim_lease }).await?;
        let _ = updates.send(Update::Registered { pairs });
        backoff.reset();
        let mut leases = vec![node_lease];
        leases.extend(mapping_lease.filter(|lease| *lease != node_lease));
        leases.extend(claim_lease);
        // The keep-alive streams open at the first renewal, which retries a failure.
        let mut renewers: Vec<Renewer> = leases.into_iter().map(Renewer::new).collect();
        // Renew three times per TTL, so that one lost renewal does not lose the lease;
        // after a failed one, try again soon. A renewal that fails (etcd overloaded, a
        // connection reset) is retried on the same lease until the lease's TTL has run
        // out since the last success: registering again on every hiccup would give each
        // node a new lease, and the old one's expiry would take the node's mapping out of
        // every agent's table and put it back, which is how an overloaded store's
        // trouble would spread to the whole fleet.
        let period = node.lease_ttl / 3;
        let mut pause = period;
        loop {
            tokio::time::sleep(pause).await;
            pause = period;
            for renewer in &mut renewers {
                match renewer.renew(&mut store, period.max(Duration::from_secs(1))).await {
                    Ok(()) => {}
                    Err(lost @ FleetError::LeaseLost { .. }) => return Err(lost),
                    Err(_) if renewer.last_renewed.elapsed() >= node.lease_ttl => {
                        return Err::<(), _>(FleetError::LeaseLost { id: renewer.lease });
                    }
                    Err(error) => {
                        tracing::warn!(lease = format!("{:x}", renewer.lease), %error, "renewing the registration lease failed; retrying");
                        pause = RENEWAL_RETRY.min(period);
                    }
                }
            }
        }
    };
    match attempt.await {
        Ok(()) => FleetError::WatchEnded,
        Err(error) => error,
    }
}

/// How soon a failed lease renewal is tried again.
const RENEWAL_RETRY: Duration = Duration::from_millis(500);

/// Keeps one lease alive over a keep-alive stream, opened again after a failure.
struct Renewer {
    lease: i64,
    stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    last_renewed: std::time::Instant,
}

impl Renewer {
    /// For a lease just granted (or just used to register).
    fn new(lease: i64) -> Self {
        Self { lease, stream: None, last_renewed: std::time::Instant::now() }
    }

    async fn open(&mut self, store: &mut Store, timeout: Duration) -> Result<(), FleetError> {
        let what = "renewing the registration lease";
        let stream = tokio::time::timeout(timeout, store.client().lease_keep_alive(self.lease))
            .await
            .map_err(|_| FleetError::Timeout { what: what.into() })?
            .map_err(|error| FleetError::Request { what: what.into(), cause: describe(&error) })?;
        self.stream = Some(stream);
        Ok(())
    }

    /// One renewal within `timeout`. `LeaseLost` if etcd says the lease is gone; another
    /// error if the renewal could not be made (the stream is opened again next time).
    async fn renew(&mut self, store: &mut Store, timeout: Duration) -> Result<(), FleetError> {
        if self.stream.is_none() {
            self.open(store, timeout).await?;
        }
        let Some((keeper, responses)) = self.stream.as_mut() else { return Err(FleetError::WatchEnded) };
        let what = "renewing the registration lease";
        // Bounded by the renewal period (as is opening the stream): a renewal stuck on a
        // dead connection must not outlast the lease it renews.
        let renewed = tokio::time::timeout(timeout, async {
            keeper.keep_alive().await?;
            responses.message().await
        })
        .await
        .map_err(|_| FleetError::Timeout { what: what.into() })
        .and_then(|result| result.map_err(|error| FleetError::Request { what: what.into(), cause: describe(&error) }));
        match renewed {
            Ok(Some(response)) if response.ttl() > 0 => {
                self.last_renewed = std::time::Instant::now();
                Ok(())
            }
            Ok(_) => Err(FleetError::LeaseLost { id: self.lease }),
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.pause()).collect();
        assert!(pauses[0] >= Duration::from_millis(75) && pauses[0] <= Duration::from_millis(125), "{pauses:?}");
        assert!(pauses[3] >= Duration::from_millis(600) && pauses[3] <= Duration::from_millis(1000), "{pauses:?}");
        assert!(pauses.iter().all(|pause| *pause <= Duration::from_secs(2)), "{pauses:?}");
        assert!(pauses[7] >= Duration::from_millis(1500), "{pauses:?}");
        backoff.reset();
        assert!(backoff.pause() <= Duration::from_millis(125));
    }
}
