//! Errors of the userspace library. Each variant says what went wrong and where, in
//! words an operator can act on; the CLI prints them as they are.

use std::{io, path::PathBuf};

use rewrite_common::validate::MappingConflict;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this build of rewrite has no eBPF programs (it was built with REWRITE_WITHOUT_EBPF set, for \
         tools that only parse); build it without that variable"
    )]
    BuiltWithoutPrograms,

    #[error("interface {name:?} does not exist in this network namespace")]
    NoSuchInterface { name: String },

    #[error("{name:?} is not a valid interface name (1 to 15 bytes, no '/', ':', '.', '..' or whitespace)")]
    InvalidInterfaceName { name: String },

    #[error("interface {name} is not an Ethernet device (link type {link_type}); rewrite parses Ethernet frames only")]
    NotEthernet { name: String, link_type: u16 },

    #[error(
        "interface {name} is already attached by rewrite (pins in {}); run `rewrite detach --iface {name}` first",
        dir.display()
    )]
    AlreadyAttached { name: String, dir: PathBuf },

    #[error(
        "interface {name} already has an XDP program (id {program_id}) that rewrite did not attach: it \
         would see ingress packets before rewrite does; remove it (`ip link set dev {name} xdp off`) first"
    )]
    ForeignXdp { name: String, program_id: u32 },

    #[error("interface {name} is not attached by rewrite (no pins in {})", dir.display())]
    NotAttached { name: String, dir: PathBuf },

    #[error(
        "{} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` or choose \
         another --pin-dir",
        dir.display()
    )]
    NotBpffs { dir: PathBuf },

    #[error(
        "{} is {} (owner uid {uid}, mode {mode:04o}): rewrite only trusts pin directories that are root's alone \
         (owner root, no access for group or others); fix it (`chown root:root DIR && chmod 700 DIR`) or remove it",
        dir.display(),
        if *is_dir { "not root's alone" } else { "not a directory" }
    )]
    UntrustedPinDir { dir: PathBuf, uid: u32, mode: u32, is_dir: bool },

    #[error(
        "the dataplane is not loaded: {} is missing; run `rewrite attach --iface IF` first",
        path.display()
    )]
    NotLoaded { path: PathBuf },

    #[error(
        "map {map} pinned at {} is of type {map_type} with key size {key_size} and value size \
         {value_size}, but this version of rewrite expects type {expected_type} with {expected_key_size} \
         and {expected_value_size}; it was created by an incompatible version",
        path.display()
    )]
    IncompatibleMap {
        map: &'static str,
        path: PathBuf,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        expected_type: u32,
        expected_key_size: u32,
        expected_value_size: u32,
    },

    #[error(
        "the table already exists with room for {existing} mappings; --max-mappings {requested} only \
         applies when the first attach creates it"
    )]
    CapacityMismatch { existing: u32, requested: u32 },

    #[error("a table needs room for at least 1 entry (--max-mappings, --max-flows)")]
    ZeroCapacity,

    #[error("the mapping table is full ({capacity} mappings); delete mappings before adding more")]
    TableFull { capacity: u32 },

    #[error("the prefix table is full ({capacity} prefix mappings)")]
    PrefixTableFull { capacity: u32 },

    #[error("invalid mapping {mapping}: {conflict}")]
    Conflict { mapping: String, conflict: MappingConflict },

    #[error("no mapping for VIRTUAL {virtual_side}")]
    NoSuchMapping { virtual_side: String },

    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },

    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),

    #[error(transparent)]
    Bounce(#[from] crate::bounce::BounceError),

    #[error(transparent)]
    Gate(#[from] crate::gate::GateError),

    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),

    #[error("no interface is attached here: attach rewrite to the interfaces bounce mode serves first")]
    NothingAttached,

    #[error(
        "the flow table exists with room for {existing} flows; --max-flows {requested} only applies when the \
         first bounce add creates it (rewrite down removes it)"
    )]
    FlowCapacityMismatch { existing: u32, requested: u32 },

    #[error(
        "another agent (pid {}) already keeps this dataplane (lock {}); stop it first",
        pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string()),
        lock.display()
    )]
    AgentRunning { pid: Option<u32>, lock: PathBuf },

    #[error(
        "another writer holds this dataplane's write lock ({}): {}; it was still busy after {} s, try again",
        lock.display(),
        if holder.is_empty() { "unknown".to_owned() } else { format!("pid {holder}") },
        waited.as_secs()
    )]
    WriterBusy { holder: String, lock: PathBuf, waited: std::time::Duration },

    #[error(
        "an agent (pid {pid}) keeps this dataplane{}: change {} and it applies the change (or `systemctl reload \
         rewrite-agent`); stop the agent to change the dataplane by hand (`rewrite upgrade` and read-only commands \
         work while it runs)",
        config.as_ref().map_or_else(String::new, |path| format!(" from {}", path.display())),
        config.as_ref().map_or_else(|| "its config or the fleet table".to_owned(), |path| path.display().to_string())
    )]
    AgentKeepsDataplane { pid: u32, config: Option<PathBuf> },

    #[error("cannot serve metrics on {address}: {source}")]
    MetricsBind { address: std::net::SocketAddr, source: io::Error },

    #[error("cannot encode the metrics")]
    MetricsEncoding,

    #[error("the kernel still holds links {ids:?} after their pins were removed; they detach when it releases them")]
    LinksNotReleased { ids: Vec<u32> },

    #[error("a batch write to map {map} stopped after {done} entries")]
    Batch { map: &'static str, done: usize, source: io::Error },

    #[error("cannot read the pinned program {}", path.display())]
    PinnedProgram { path: PathBuf, source: Box<aya::programs::ProgramError> },

    #[error("cannot use the pinned link {}", path.display())]
    PinnedLink { path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },

    #[error("{what} {mapping}: {why}; nothing was applied")]
    ApplyRefused { what: &'static str, mapping: String, why: String },

    #[error("{feature} need Linux >= {since}, and this kernel is {kernel}: {instead}")]
    KernelLacks { feature: &'static str, since: &'static str, kernel: String, instead: &'static str },

    #[error(
        "the kernel (Linux {kernel}) refused program {program}: {reason}; rewrite supports Linux 5.10 and later \
         (run with --verbose for the verifier's log)"
    )]
    VerifierRefused { program: &'static str, kernel: String, reason: String, log: String },

    #[error(
        "{slot} on {iface} holds a filter this dataplane did not attach (program {filter:?}, id {id}); rewrite \
         leaves it alone: remove it (`tc filter del dev {iface} {hook} pref {priority} handle {handle:#x} bpf`) or \
         use --tc-attach tcx"
    )]
    FilterSlotTaken {
        iface: String,
        slot: String,
        hook: &'static str,
        priority: u16,
        handle: u32,
        filter: String,
        id: u32,
    },

    #[error("rewrite's filter at {slot} on {iface} is missing; detach and attach the interface again")]
    FilterMissing { iface: String, slot: String },

    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),

    #[error("{action} of program {program} on {iface} failed")]
    Program {
        action: &'static str,
        program: &'static str,
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("program {program} on {iface} is not attached through a pinnable bpf link ({why})")]
    Link {
        why: &'static str,
        program: &'static str,
        iface: String,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },

    #[error("the address filter map (ADDR_FILTER) cannot be used: {why}")]
    FilterMap { why: String },

    #[error("operation on map {map} failed")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error("pinning {} failed", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },

    #[error("{action} {} failed", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{what} for interface {iface} failed")]
    Netdevice {
        what: &'static str,
        iface: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Whether the underlying system call failed with `errno`.
    pub fn is_errno(&self, errno: i32) -> bool {
        let syscall_errno = |error: &aya::programs::ProgramError| match error {
            aya::programs::ProgramError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
            _ => None,
        };
        match self {
            Self::Program { source, .. } => syscall_errno(source) == Some(errno),
            Self::Io { source, .. } | Self::Netdevice { source, .. } => source.raw_os_error() == Some(errno),
            _ => false,
        }
    }

    pub(crate) fn map(map: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map { map, source: Box::new(source) }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { action, path: path.into(), source }
    }
}
