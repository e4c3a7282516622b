//! The command line's grammar: what `rewrite` accepts, and the parsers of its values.
//! What each command does lives in the binary. Kept in the library so that the tests
//! and the fuzz targets parse arguments exactly as the binary does.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rewrite_common::spec::{Side, SpecError};

use crate::{loader::IngressMode, pins::DEFAULT_PIN_DIR};

/// Stateless eBPF address rewriting for moving live servers between networks.
///
/// A mapping VIRTUAL -> REAL says: the host applications know as VIRTUAL is really
/// reached at REAL. On attached interfaces, egress packets to (or from) VIRTUAL are
/// sent to (or from) REAL, and ingress packets from (or to) REAL are restored to
/// VIRTUAL.
#[derive(Debug, Parser)]
#[command(name = "rewrite", version)]
pub struct Cli {
    /// bpffs directory that holds the pinned maps, programs and links. Use one per
    /// network namespace.
    #[arg(long, global = true, env = "REWRITE_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs, attach them to an interface and pin them.
    Attach {
        /// The interface to attach to.
        #[arg(long)]
        iface: String,
        /// Where ingress packets are rewritten. `auto` picks native XDP on devices
        /// whose packets come from a wire and TC on veth and other virtual devices,
        /// where XDP cannot see partially computed checksums.
        #[arg(long, value_enum, default_value_t = IngressMode::Auto)]
        ingress: IngressMode,
        /// Room for this many mappings. Only the first attach, which creates the
        /// table, can set it [default: 1048576].
        #[arg(long, value_name = "N")]
        max_mappings: Option<u32>,
    },
    /// Detach from an interface. The mapping table stays.
    Detach {
        #[arg(long)]
        iface: String,
    },
    /// Edit or show the mapping table.
    #[command(subcommand)]
    Map(MapCommand),
    /// Show attached interfaces with their ingress mode and programs (ids and tags),
    /// the table's capacity and use, the version of the programs this binary carries,
    /// and whether an agent keeps this dataplane.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Replace the programs on every attached interface by those of this binary (or
    /// of `--object`), atomically per attachment (BPF link update). The pinned maps and
    /// their contents stay; a map layout the new programs do not share is refused
    /// before anything changes.
    Upgrade {
        /// An eBPF object file built from rewrite-ebpf, instead of the embedded one.
        #[arg(long, value_name = "FILE")]
        object: Option<PathBuf>,
    },
    /// Remove everything rewrite created here: every interface's programs and links,
    /// the maps with their mappings, and the pin directory. Nothing else is touched.
    Down,
    /// Make the live state equal to a config file: check the whole file first (every
    /// problem is reported with its line and column, and nothing is applied if there is
    /// one), attach the interfaces it names that are not attached, then print and apply
    /// the difference in the mapping table (added, removed, changed).
    Apply {
        /// The TOML config (see `rewrite export` for the format).
        file: PathBuf,
        /// Check the file and print the difference; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the live state (attached interfaces and mappings) as a config file;
    /// applying it back changes nothing.
    Export,
    /// Keep the dataplane equal to a config file, in the foreground (for systemd):
    /// apply it at start, on every change to the file and on SIGHUP; serve Prometheus
    /// metrics; log in JSON (level from REWRITE_LOG, default info). Killing the agent
    /// leaves the dataplane running, and a new agent adopts it.
    Agent {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Where to serve `/metrics`. Loopback by default: expose it deliberately.
        #[arg(long, value_name = "ADDR:PORT", default_value_t = crate::metrics::default_address())]
        metrics: std::net::SocketAddr,
    },
    /// Show the counters, summed over CPUs: packets by outcome and direction, then
    /// packets and bytes per mapping and direction, busiest first.
    Stats {
        #[arg(long)]
        json: bool,
        /// Show only the N busiest mappings (by bytes, or by byte rate with --watch).
        /// Without --json the default is 50; with --json, every mapping.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// Print again every `--interval` seconds, with the rate per second since the
        /// previous print, until interrupted (or `--count` prints).
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS", requires = "watch", value_parser = parse_interval)]
        interval: f64,
        /// Stop after this many prints.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
}

pub fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if (0.1..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!("{text:?} is not an interval from 0.1 to 3600 seconds")),
    }
}

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Add a mapping, or retarget an address mapping to a new REAL. Takes effect for
    /// the next packet.
    ///
    /// Forms: `10.0.0.5 192.0.2.5` and `fd00::5 2001:db8::5` (addresses),
    /// `10.0.0.5:9300/tcp 192.0.2.5:9300/tcp` and `[fd00::5]:53/udp [2001:db8::5]:53/udp`
    /// (one service), `10.0.0.5:49152-49251/tcp 192.0.2.5:49152-49251/tcp` (a range of
    /// ports, the same width on both sides). A port-scoped mapping is looked up before
    /// an address mapping and leaves the host's other ports alone.
    Add {
        /// What applications use.
        #[arg(value_name = "VIRTUAL", value_parser = parse_side)]
        virtual_side: Side,
        /// Where the host or service really is.
        #[arg(value_name = "REAL", value_parser = parse_side)]
        real_side: Side,
    },
    /// Delete the mapping of VIRTUAL (an address, or ADDR:PORT[-PORT]/PROTO).
    Del {
        #[arg(value_name = "VIRTUAL", value_parser = parse_side)]
        virtual_side: Side,
    },
    /// List the mappings.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn parse_side(text: &str) -> Result<Side, SpecError> {
    text.parse()
}
