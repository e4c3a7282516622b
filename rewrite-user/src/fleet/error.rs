//! What can go wrong with the fleet table, and etcd's errors in one line.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use crate::table::admission::Refusal;

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
    #[error("the fleet table at {key} has schema version {found:?}; this rewrite reads version {expected} only")]
    Schema { key: String, found: String, expected: &'static str },
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

pub(crate) fn request(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> FleetError {
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
pub(crate) async fn timed<T>(
    what: &str,
    future: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, future).await {
        Ok(result) => result.map_err(request(what)),
        Err(_) => Err(FleetError::Timeout { what: what.to_owned() }),
    }
}
