//! Facts of the host the dataplane runs on that decide what may be configured: the
//! ephemeral port range, where replies to the host's own connections arrive.

use std::path::{Path, PathBuf};

use rewrite_common::ports::PortRange;

/// Where Linux keeps the ephemeral port range that replies to this host's own
/// connections arrive on.
pub const EPHEMERAL_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

#[derive(Debug, thiserror::Error)]
#[error("cannot read the ephemeral port range from {}: {why}", path.display())]
pub struct EphemeralRangeError {
    pub path: PathBuf,
    pub why: String,
}

/// This host's ephemeral port range.
pub fn ephemeral_range() -> Result<PortRange, EphemeralRangeError> {
    ephemeral_range_from(Path::new(EPHEMERAL_RANGE_PATH))
}

fn ephemeral_range_from(path: &Path) -> Result<PortRange, EphemeralRangeError> {
    let failed = |why: String| EphemeralRangeError { path: path.to_owned(), why };
    let text = std::fs::read_to_string(path).map_err(|error| failed(error.to_string()))?;
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    match (fields.next(), fields.next()) {
        (Some(Ok(first)), Some(Ok(last))) => {
            PortRange::new(first, last).ok_or_else(|| failed(format!("{text:?} is an empty range")))
        }
        _ => Err(failed(format!("{text:?} is not two ports"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_read_as_linux_writes_it() {
        let dir = std::env::temp_dir().join(format!("rewrite-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let file = dir.join("range");
        std::fs::write(&file, "32768\t60999\n").expect("write");
        assert_eq!(ephemeral_range_from(&file).map(|range| range.to_string()).ok(), Some("32768-60999".into()));
        std::fs::write(&file, "9 3\n").expect("write");
        assert!(ephemeral_range_from(&file).is_err());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
