//! The command line's grammar: what `rewrite` accepts, and the parsers of its values.
//! What each command does lives in the binary. Kept in the library so that the tests
//! and the fuzz targets parse arguments exactly as the binary does.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rewrite_common::spec::{Side, SpecError};

use crate::{dataplane::pins::DEFAULT_PIN_DIR, dataplane::slots::IngressMode, dataplane::tc::TcAttach};

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

    /// On an error, also print what lies behind it: the kernel verifier's whole log
    /// when it refuses a program.
    #[arg(long, short, global = true)]
    pub verbose: bool,

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
        /// How the TC programs attach: `auto` uses tcx links on Linux 6.6 and later and
        /// cls_bpf filters on a clsact qdisc (netlink) below; `tcx` and `netlink`
        /// force one.
        #[arg(long, value_enum, default_value_t = TcAttach::Auto)]
        tc_attach: TcAttach,
        /// Room for this many mappings. Only the first attach, which creates the
        /// table, can set it [default: 1048576].
        #[arg(long, value_name = "N")]
        max_mappings: Option<u32>,
    },
    /// Detach from an interface.
    ///
    /// The mapping table stays.
    Detach {
        #[arg(long)]
        iface: String,
    },
    /// Edit or show the mapping table.
    #[command(subcommand)]
    Map(MapCommand),
    /// Show what is attached, the table's use and whether an agent runs.
    ///
    /// Attached interfaces with their ingress mode and programs (ids and tags), the
    /// table's capacity and use, the version of the programs this binary carries, and
    /// whether an agent keeps this dataplane.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Replace the running programs by this binary's, atomically, keeping the maps.
    ///
    /// On every attached interface, by those of this binary (or of `--object`), atomically
    /// per attachment (BPF link update). The pinned maps and their contents stay; a map layout the new programs do not share is
    /// refused before anything changes.
    Upgrade {
        /// An eBPF object file built from rewrite-ebpf, instead of the embedded one.
        #[arg(long, value_name = "FILE")]
        object: Option<PathBuf>,
    },
    /// Remove everything rewrite created here
    ///
    /// Every interface's programs and links, the maps with their mappings, and the pin directory.
    /// Nothing else is touched.
    Down,
    /// Make the live state equal to a config file
    ///
    /// Check the whole file first (every problem is reported with its line and column, and nothing
    /// is applied if there is one), attach the interfaces it names that are not attached, then
    /// print and apply the difference in the mapping table (added, removed, changed), in bounce
    /// mode's services and in the gate, for the sections the file has.
    Apply {
        /// The TOML config (see `rewrite export` for the format).
        file: PathBuf,
        /// Check the file and print the difference; change nothing. The exit status
        /// says whether applying would change anything: 0 nothing, 2 changes pending,
        /// 1 an error.
        #[arg(long)]
        dry_run: bool,
        /// Print the difference (and, once applied, the summary) as one JSON object.
        #[arg(long)]
        json: bool,
        /// Print only the summary, not one line per change (for large configs).
        #[arg(long, conflicts_with = "json")]
        quiet: bool,
    },
    /// Check a config file without touching the dataplane, as `apply` checks it
    ///
    /// Every problem with its line and column. Needs no root; exit status 0 if the file is valid, 1
    /// if not (for a pipeline). The live table's capacity and what another writer holds are only
    /// known to `apply`.
    Check {
        /// The TOML config.
        file: PathBuf,
    },
    /// Print the live state as a config file.
    ///
    /// Attached interfaces, mappings, bounce services and the gate; applying it back
    /// changes nothing.
    Export,
    /// Print a shell completion script.
    ///
    /// For SHELL (bash, zsh, fish, elvish or powershell), e.g. `rewrite completions bash >
    /// /usr/share/bash-completion/completions/rewrite`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (rewrite.1 and one per command) into DIR.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Keep the dataplane equal to a config file and, with `--etcd`, to a fleet table, in the
    /// foreground (for systemd)
    ///
    /// Apply the config at start, on every change to the file and on SIGHUP; follow the fleet table
    /// (full sync at start, on reconnect and after compaction, single changes as they come); serve
    /// Prometheus metrics; log in JSON (level from REWRITE_LOG, default info). Killing the agent
    /// leaves the dataplane running, and a new agent adopts it.
    Agent {
        /// The TOML config. Its `[fleet]` section is used unless `--etcd` is given.
        #[arg(long, required_unless_present = "etcd")]
        config: Option<PathBuf>,
        /// Where to serve `/metrics`. Loopback by default: expose it deliberately.
        #[arg(long, value_name = "ADDR:PORT", default_value_t = crate::agent::metrics::default_address())]
        metrics: std::net::SocketAddr,
        /// Which mappings get series of their own in /metrics: none, top:N (the N with
        /// the most packets) or all (four series per mapping).
        #[arg(long, value_name = "none|top:N|all", default_value_t = crate::agent::metrics::MappingSeries::DEFAULT)]
        metrics_mappings: crate::agent::metrics::MappingSeries,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        node: NodeArgs,
        /// Longest pause between two attempts to reach etcd (the pause doubles from
        /// 100 ms up to this).
        #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        etcd_retry_max: u64,
        /// Follow the fleet table through these endpoints instead of `--etcd` (an etcd gRPC
        /// proxy near the node, which serves a rack's agents over one watch on the cluster);
        /// registration, leases and writes still go to `--etcd`.
        #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',', requires = "etcd")]
        etcd_watch: Vec<String>,
        /// This node's zone: of a fleet mapping with a REAL per zone (`fleet add --zone`),
        /// apply the REAL of this zone (the default REAL if the mapping has none for it).
        #[arg(long, value_name = "ZONE", requires = "etcd")]
        zone: Option<String>,
    },
    /// Edit the fleet table in etcd that agents started with `--etcd` follow.
    ///
    /// Every change is checked against the whole table as `apply` checks a config, and committed
    /// only if nobody changed the table meanwhile.
    Fleet {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Bounce mode: forward a LISTEN endpoint to a TARGET in the kernel.
    ///
    /// Forward what arrives at LISTEN to TARGET in the kernel, as a full NAT (the replacement for
    /// `socat TCP-LISTEN:P,fork TCP:NEW:P` and Barefoot). Runs on the ingress of every attached
    /// interface; needs IP forwarding on.
    #[command(subcommand)]
    Bounce(BounceCommand),
    /// The gatekeeper: only fleet members reach protected ports.
    ///
    /// On protected ports, admit only fleet members (the REAL addresses of the mapping table) and
    /// allow prefixes; drop the rest at ingress, in XDP where the interface runs it. Off until
    /// `gate mode monitor|enforce`; ssh stays open.
    #[command(subcommand)]
    Gate(GateCommand),
    /// Show the counters, summed over CPUs.
    ///
    /// Packets by outcome and direction, then packets and bytes per mapping and direction, busiest
    /// first.
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
    /// Show why packets were or were not rewritten, one line each, as they pass.
    ///
    /// For each packet the FILTER selects (e.g. `host 10.0.0.5 and tcp port 9300`; terms
    /// `[src|dst] host ADDR`, `[src|dst] net PREFIX`, `[src|dst] port PORT[-PORT]`, `tcp`,
    /// `udp`, joined by `and`; tested on the packet as it arrived and as it left): time,
    /// interface, hook, direction, the flow before and after, the outcome (rewritten,
    /// no_match, malformed or unsupported with the reason, fragment_unmatched, gate_dropped),
    /// the table that matched each side and the gate's verdict. Costs nothing while no
    /// trace runs; needs no change to a running agent. One trace at a time.
    Trace {
        /// Only packets on this interface.
        #[arg(long, value_name = "IF")]
        iface: Option<String>,
        /// Only packets at this hook (repeat for more) [default: all three].
        #[arg(long, value_name = "HOOK", value_parser = ["xdp", "tc-ingress", "tc-egress"])]
        hook: Vec<String>,
        /// Stop after this many records.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
        timeout: Option<f64>,
        /// Records each CPU writes at most per second; the rest are counted and reported.
        #[arg(long, value_name = "N", default_value_t = crate::trace::DEFAULT_RATE)]
        rate: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Which packets (see above); none: every packet.
        #[arg(value_name = "FILTER", trailing_var_arg = true, allow_hyphen_values = false)]
        filter: Vec<String>,
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
    /// Add a mapping, or retarget an address mapping to a new REAL.
    ///
    /// Takes effect for the next packet.
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

#[derive(Debug, Subcommand)]
pub enum BounceCommand {
    /// Add a service, or change where an existing LISTEN goes.
    ///
    /// Takes effect for the next new flow; flows already open keep their target.
    ///
    /// `rewrite bounce add 10.0.0.1:9200/tcp 192.0.2.7:9200`: flows to 10.0.0.1:9200
    /// go to 192.0.2.7:9200, from this host's address on the route there and a port of
    /// `--ports`; replies go back to the client from 10.0.0.1:9200.
    Add {
        /// ADDR:PORT/PROTO that clients connect to ([ADDR]:PORT/PROTO for IPv6).
        #[arg(value_name = "LISTEN")]
        listen: String,
        /// ADDR:PORT the flows go to.
        #[arg(value_name = "TARGET")]
        target: String,
        /// The address the target sees the flows come from [default: the source address
        /// of the route to TARGET].
        #[arg(long, value_name = "ADDR")]
        source: Option<std::net::IpAddr>,
        /// Source ports for the flows, FIRST-LAST; at most this many flows at once per
        /// service [default: 61000-65535, above Linux's ephemeral ports].
        #[arg(long, value_name = "FIRST-LAST", value_parser = parse_bounce_ports)]
        ports: Option<rewrite_common::ports::PortRange>,
        /// Room for this many flows at once over all services. Only the first bounce add,
        /// which creates the flow table (and attaches the bounce program to every
        /// attached interface), can set it; the table takes about 400 bytes of kernel
        /// memory per flow, allocated up front [default: 1000000].
        #[arg(long, value_name = "N")]
        max_flows: Option<u32>,
    },
    /// Delete a service and drop its open flows.
    Del {
        #[arg(value_name = "LISTEN")]
        listen: String,
    },
    /// List the services with their live flows.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show the counters and the flow table's use.
    ///
    /// Connects, closes by reason, port exhaustion, unroutable, events lost; the flows in
    /// the table and the flows evicted from it.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Print connect and disconnect events as they happen (one reader at a time).
    Log(FollowArgs),
    /// Set the idle timeouts after which a flow ends (and its port is free again).
    Timeouts {
        /// UDP flows [default: 60].
        #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
        udp: Option<f64>,
        /// TCP flows that neither closed nor reset [default: 7200].
        #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
        tcp: Option<f64>,
        /// Flows the target never answered: a SYN nobody answers, a datagram without a
        /// reply; short, so that lone packets cannot hold the source ports [default: 10].
        #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
        unreplied: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GateCommand {
    /// Set the gate's mode: off, monitor or enforce.
    ///
    /// off (the default: nothing is checked), monitor (count what would be dropped, drop
    /// nothing) or enforce.
    Mode {
        #[arg(value_name = "MODE", value_parser = ["off", "monitor", "enforce"])]
        mode: String,
    },
    /// Protect ports: PROTO/PORT, PROTO/FIRST-LAST, PROTO/all or all (PROTO is tcp or udp).
    ///
    /// `all` leaves out this host's ephemeral ports, where replies to its own connections arrive;
    /// naming one of those is refused.
    Protect {
        #[arg(value_name = "PORTS", required = true)]
        ports: Vec<String>,
    },
    /// Stop protecting ports (same forms as protect).
    Unprotect {
        #[arg(value_name = "PORTS", required = true)]
        ports: Vec<String>,
    },
    /// Admit sources in these prefixes (ADDR/LEN, or an address) besides the fleet.
    Allow {
        #[arg(value_name = "PREFIX", required = true)]
        prefixes: Vec<String>,
    },
    /// Take allow prefixes away.
    Disallow {
        #[arg(value_name = "PREFIX", required = true)]
        prefixes: Vec<String>,
    },
    /// Set the ports the gate never closes, replacing the previous ones.
    ///
    /// ssh (tcp/22) until this is used.
    ///
    /// `--none` takes the fail-safe away.
    Management {
        #[arg(value_name = "PORTS", required_unless_present = "none")]
        ports: Vec<String>,
        #[arg(long, conflicts_with = "ports")]
        none: bool,
    },
    /// Show the mode, the protected and management ports and the allow prefixes.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Show the counters
    ///
    /// Packets to protected ports passed by reason, would-drop (monitor) and dropped (enforce).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Print samples of denied packets as they come.
    ///
    /// At most one per CPU every 10 ms; one reader at a time.
    Log(FollowArgs),
}

/// How to follow an event stream (`bounce log`, `gate log`).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct FollowArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
    pub timeout: Option<f64>,
}

fn parse_bounce_ports(text: &str) -> Result<rewrite_common::ports::PortRange, String> {
    crate::bounce::parse_port_range(text).map_err(|error| error.to_string())
}

/// How to reach the fleet table in etcd. Global, so that `fleet --etcd URL add ...` and
/// `fleet add ... --etcd URL` mean the same.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// etcd endpoints, comma-separated (http://HOST:PORT, or https:// with --etcd-ca).
    #[arg(
        long,
        global = true,
        value_name = "URL[,URL...]",
        env = "REWRITE_ETCD",
        value_delimiter = ',',
        requires = "prefix"
    )]
    pub etcd: Vec<String>,
    /// The cluster's key prefix, e.g. /rewrite/prod.
    #[arg(long, global = true, value_name = "PREFIX", env = "REWRITE_FLEET_PREFIX", requires = "etcd")]
    pub prefix: Option<String>,
    /// CA certificate (PEM) of the etcd servers; turns TLS on.
    #[arg(long, global = true, value_name = "FILE", requires = "etcd")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that check client certificates.
    #[arg(long, global = true, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user.
    #[arg(long, global = true, value_name = "NAME", requires = "etcd")]
    pub etcd_user: Option<String>,
    /// File whose first line is the etcd user's password.
    #[arg(long, global = true, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// Seconds without an answer to an HTTP/2 ping after which the connection to etcd
    /// counts as lost.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub etcd_keepalive: u64,
}

/// Registration of this node in the fleet table.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeArgs {
    /// Register this node under this id: it claims a VIRTUAL address from `--pool` for
    /// each `--node-real` (the same one again after a restart).
    #[arg(long, value_name = "ID", requires_all = ["etcd", "node_real", "pool"])]
    pub node: Option<String>,
    /// A REAL address of this node (repeat for IPv4 and IPv6).
    #[arg(long, value_name = "ADDR", requires = "node")]
    pub node_real: Vec<std::net::IpAddr>,
    /// The pool to claim from.
    #[arg(long, value_name = "POOL", requires = "node")]
    pub pool: Option<String>,
    /// The registration lease's TTL: a node that stops renewing it is gone this long
    /// after.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=86400))]
    pub lease_ttl: u64,
    /// When a gone node's mappings leave the table: `lease` (with its lease), a grace
    /// period after it (`90s`, `10m`, `2h`), or `never` (only `rewrite fleet del`).
    #[arg(long, value_name = "WHEN", default_value = "lease")]
    pub expire_after: crate::fleet::MappingExpiry,
    /// When a gone node's VIRTUAL goes back to the pool: `never` (the node id keeps it
    /// for good), or this long after its lease lapsed (`1h`), which must be later than
    /// its mapping leaves the table: the time between is the quarantine in which every
    /// agent removes the mapping before the address is handed out again.
    #[arg(long, value_name = "WHEN", default_value = "never")]
    pub release_claim_after: crate::fleet::options::ClaimRelease,
}

impl StoreArgs {
    /// The store these arguments name, if `--etcd` was given.
    pub fn options(&self) -> Option<crate::fleet::StoreOptions> {
        let prefix = self.prefix.clone()?;
        let mut options = crate::fleet::StoreOptions::new(self.etcd.clone(), prefix);
        options.ca = self.etcd_ca.clone();
        options.cert = self.etcd_cert.clone();
        options.key = self.etcd_key.clone();
        options.user = self.etcd_user.clone();
        options.password_file = self.etcd_password_file.clone();
        options.keepalive = std::time::Duration::from_secs(self.etcd_keepalive);
        Some(options)
    }
}

impl NodeArgs {
    pub fn options(&self) -> Option<crate::fleet::NodeOptions> {
        Some(crate::fleet::NodeOptions {
            id: self.node.clone()?,
            reals: self.node_real.clone(),
            pool: self.pool.clone()?,
            lease_ttl: std::time::Duration::from_secs(self.lease_ttl),
            expiry: self.expire_after,
            release_claim_after: self.release_claim_after.0,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// List the fleet table's mappings (and keys that are not valid mappings).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a mapping to the fleet table, or retarget one (forms as in `map add`).
    Add {
        #[arg(value_name = "VIRTUAL", value_parser = parse_side)]
        virtual_side: Side,
        #[arg(value_name = "REAL", value_parser = parse_side)]
        real_side: Side,
        #[arg(long)]
        label: Option<String>,
        /// A REAL for agents in one zone (`--zone vpc-a=172.16.0.5`, repeat per zone):
        /// agents started with `--zone vpc-a` apply it, the others REAL.
        #[arg(long = "zone", value_name = "ZONE=REAL", value_parser = parse_zone_real)]
        zones: Vec<(String, Side)>,
    },
    /// Delete the fleet mapping of VIRTUAL.
    Del {
        #[arg(value_name = "VIRTUAL", value_parser = parse_side)]
        virtual_side: Side,
    },
    /// Address pools that nodes claim VIRTUAL addresses from.
    #[command(subcommand)]
    Pool(PoolCommand),
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List pools with their size and claims.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a pool from one or more prefixes (IPv4 and IPv6 may be mixed).
    Add {
        name: String,
        #[arg(value_name = "PREFIX", required = true)]
        prefixes: Vec<String>,
    },
    /// Delete a pool and its claims (mappings stay).
    Del { name: String },
    /// Free an address a node claimed, so that the pool can hand it out again.
    Release {
        name: String,
        #[arg(value_name = "ADDRESS")]
        address: std::net::IpAddr,
    },
}

pub fn parse_side(text: &str) -> Result<Side, SpecError> {
    text.parse()
}

/// `ZONE=REAL`, as `fleet add --zone` takes it.
pub fn parse_zone_real(text: &str) -> Result<(String, Side), String> {
    let (zone, real) = text.split_once('=').ok_or_else(|| format!("{text:?} is not ZONE=REAL"))?;
    crate::fleet::check_name("zone", zone).map_err(|error| error.to_string())?;
    Ok((zone.to_owned(), real.parse().map_err(|error: SpecError| error.to_string())?))
}

impl Command {
    /// Whether the command changes the dataplane (maps, programs, attachments), and so
    /// takes the write lock. `apply --dry-run` and every listing only read.
    pub fn writes(&self) -> bool {
        match self {
            Self::Attach { .. } | Self::Detach { .. } | Self::Upgrade { .. } | Self::Down => true,
            Self::Apply { dry_run, .. } => !dry_run,
            Self::Map(command) => !matches!(command, MapCommand::List { .. }),
            Self::Bounce(command) => {
                !matches!(command, BounceCommand::List { .. } | BounceCommand::Stats { .. } | BounceCommand::Log(_))
            }
            Self::Gate(command) => {
                !matches!(command, GateCommand::Show { .. } | GateCommand::Stats { .. } | GateCommand::Log(_))
            }
            // The agent takes the lock for each change it makes; the rest only read.
            Self::Agent { .. }
            | Self::Status { .. }
            | Self::Export
            | Self::Stats { .. }
            | Self::Trace { .. }
            | Self::Fleet { .. }
            | Self::Check { .. }
            | Self::Completions { .. }
            | Self::Manpages { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rewrite").chain(args.iter().copied()))
    }

    #[test]
    fn etcd_options_are_accepted_on_either_side_of_the_fleet_subcommand() {
        let before = parse(&["fleet", "--etcd", "http://127.0.0.1:2379", "--prefix", "/p", "list"]);
        let after = parse(&["fleet", "list", "--etcd", "http://127.0.0.1:2379", "--prefix", "/p"]);
        let add =
            parse(&["fleet", "add", "10.0.0.5", "192.0.2.5", "--etcd", "http://127.0.0.1:2379", "--prefix", "/p"]);
        for (what, parsed) in [("before", before), ("after", after), ("add", add)] {
            let cli = parsed.unwrap_or_else(|error| panic!("{what}: {error}"));
            let Command::Fleet { store, .. } = cli.command else { panic!("{what}: not a fleet command") };
            assert_eq!(store.etcd, ["http://127.0.0.1:2379"], "{what}");
            assert_eq!(store.prefix.as_deref(), Some("/p"), "{what}");
        }
    }

    #[test]
    fn gate_mode_lists_its_possible_values() {
        let error = parse(&["gate", "mode", "enforcing"]).expect_err("an unknown mode is refused").to_string();
        for mode in ["off", "monitor", "enforce"] {
            assert!(error.contains(mode), "the error lists {mode}: {error}");
        }
        assert!(parse(&["gate", "mode", "monitor"]).is_ok());
    }
}
