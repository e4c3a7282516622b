//! Where each thing lives in etcd: the keys under a cluster's prefix (see the module
//! documentation of `fleet` for the layout and its values).

use std::net::IpAddr;

use crate::fleet::error::FleetError;

pub const SCHEMA_VERSION: &str = "1";

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

    /// The index of a node's claims in a pool: `holders/POOL/NODE/ADDRESS`, one key per
    /// claim, written and removed with it, so a node finds its claims without reading
    /// the whole pool.
    pub fn holders(&self, pool: &str, node: &str) -> String {
        format!("{}/holders/{pool}/{node}/", self.prefix)
    }

    pub fn holder(&self, pool: &str, node: &str, address: IpAddr) -> String {
        format!("{}/holders/{pool}/{node}/{address}", self.prefix)
    }

    /// Every holder key of a pool.
    pub fn pool_holders(&self, pool: &str) -> String {
        format!("{}/holders/{pool}/", self.prefix)
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

/// The end of the key range of every key that starts with `prefix`.
pub(crate) fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
