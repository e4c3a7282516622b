//! The registry of everything the two eBPF objects declare: each map with its type and
//! its key and value sizes, and each program with its kind. The names are the ones the
//! programs' `#[map(name = ...)]` and function names carry (a test reads both objects
//! and holds them against this list), the ones `attach`, `upgrade` and `status` pin and
//! look for, and the sizes are those of this crate's types, so a build whose maps drift
//! from what userspace reads and writes fails its tests instead of corrupting a table.

use core::mem::size_of;

use crate::{
    bounce::{
        BounceService, BounceSettings, FlowEntry, FlowTuple, MAP_BOUNCE_COUNTERS, MAP_BOUNCE_EVENTS, MAP_BOUNCE_FLOWS,
        MAP_BOUNCE_LOG_LEASE, MAP_BOUNCE_SERVICES, MAP_BOUNCE_SETTINGS, MAP_BOUNCE_XDP,
    },
    filter::MAP_ADDR_FILTER,
    gate::{
        GateSettings, MAP_GATE_ALLOW, MAP_GATE_COUNTERS, MAP_GATE_LOG, MAP_GATE_LOG_LEASE, MAP_GATE_PORTS,
        MAP_GATE_SETTINGS,
    },
    maps::{
        Addr, AddressEntry, Endpoint, EndpointEntry, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_COUNTERS, MAP_ICMP_ERRORS,
        MAP_PORT_FORWARD, MAP_PORT_REVERSE, MAP_PREFIX_FORWARD, MAP_PREFIX_REVERSE, MAP_TABLES_IN_USE, PrefixEntry,
        TablesInUse,
    },
    trace::{MAP_TRACE_BUDGET, MAP_TRACE_CONTROL, MAP_TRACE_LEASE, MAP_TRACE_RING, TraceBudget, TraceControl},
};

/// The two objects rewrite-ebpf builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// The rewrite programs, the gate and the mapping table (`rewrite-ebpf`).
    Rewrite,
    /// Bounce mode, loaded by the first `bounce add` (`rewrite-bounce`).
    Bounce,
}

/// The kernel's map types rewrite uses, by their `BPF_MAP_TYPE_*` numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    Hash = 1,
    Array = 2,
    ProgramArray = 3,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
    RingBuf = 27,
}

/// One map an object declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub object: Object,
    pub map_type: MapType,
    /// Key and value sizes in bytes, as the kernel reports them (a per-CPU map's value
    /// is one CPU's; a ring buffer has neither).
    pub key_size: u32,
    pub value_size: u32,
    /// Pinned under the pin directory's `maps/` (shared by every program and process),
    /// or private to each load of the object (per-CPU scratch space).
    pub pinned: bool,
}

/// What kind of program, for the hook it attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    Xdp,
    /// A TC program (`SchedClassifier`), attached through tcx or a netlink filter.
    Classifier,
}

/// One program an object declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramSpec {
    pub name: &'static str,
    pub object: Object,
    pub kind: ProgramKind,
}

pub const PROG_XDP_INGRESS: &str = "rewrite_xdp_ingress";
pub const PROG_TC_INGRESS: &str = "rewrite_tc_ingress";
pub const PROG_TC_EGRESS: &str = "rewrite_tc_egress";
/// The TC ingress program that rewrites ICMP errors (and their quoted packet) beside
/// the XDP ingress program, which leaves them alone.
pub const PROG_TC_ICMP_ERRORS: &str = "rewrite_tc_icmp_errors";
/// The TC egress program's counterpart of [`PROG_TC_ICMP_ERRORS`], reached by a tail
/// call only.
pub const PROG_TC_EGRESS_ICMP_ERRORS: &str = "rewrite_tc_egress_icmp_errors";
/// An XDP program that only returns XDP_PASS: the baseline for benchmarks.
pub const PROG_BENCH_XDP_PASS: &str = "bench_xdp_pass";
/// A TC program that only returns TC_ACT_UNSPEC: the floor of a TC hook for benchmarks.
pub const PROG_BENCH_TC_PASS: &str = "bench_tc_pass";
/// Bounce mode's TC ingress program, beside the rewrite programs on every attached
/// interface once bounce mode is in use (it returns at once while no service exists).
pub const PROG_TC_BOUNCE: &str = "bounce_tc_ingress";
/// Bounce mode in XDP, reached by a tail call from [`PROG_XDP_INGRESS`] through the
/// `BOUNCE_XDP` program array, not attached itself.
pub const PROG_XDP_BOUNCE: &str = "bounce_xdp_ingress";

/// Every program of both objects.
pub const PROGRAMS: [ProgramSpec; 9] = [
    program(PROG_XDP_INGRESS, Object::Rewrite, ProgramKind::Xdp),
    program(PROG_TC_INGRESS, Object::Rewrite, ProgramKind::Classifier),
    program(PROG_TC_EGRESS, Object::Rewrite, ProgramKind::Classifier),
    program(PROG_TC_ICMP_ERRORS, Object::Rewrite, ProgramKind::Classifier),
    program(PROG_TC_EGRESS_ICMP_ERRORS, Object::Rewrite, ProgramKind::Classifier),
    program(PROG_BENCH_XDP_PASS, Object::Rewrite, ProgramKind::Xdp),
    program(PROG_BENCH_TC_PASS, Object::Rewrite, ProgramKind::Classifier),
    program(PROG_TC_BOUNCE, Object::Bounce, ProgramKind::Classifier),
    program(PROG_XDP_BOUNCE, Object::Bounce, ProgramKind::Xdp),
];

const fn program(name: &'static str, object: Object, kind: ProgramKind) -> ProgramSpec {
    ProgramSpec { name, object, kind }
}

/// The key of an LPM trie: a `u32` prefix length, then the address.
const LPM_KEY: usize = size_of::<u32>() + size_of::<Addr>();
const INDEX: usize = size_of::<u32>();

/// Every map of both objects. (`BOUNCE_XDP` belongs to the rewrite object, whose XDP
/// program tail-calls through it; the bounce object's program is put in it by its pin.)
pub const MAPS: [MapSpec; 31] = [
    pinned(MAP_ADDR_FORWARD, Object::Rewrite, MapType::Hash, size_of::<Addr>(), size_of::<AddressEntry>()),
    pinned(MAP_ADDR_REVERSE, Object::Rewrite, MapType::Hash, size_of::<Addr>(), size_of::<AddressEntry>()),
    pinned(MAP_PORT_FORWARD, Object::Rewrite, MapType::Hash, size_of::<Endpoint>(), size_of::<EndpointEntry>()),
    pinned(MAP_PORT_REVERSE, Object::Rewrite, MapType::Hash, size_of::<Endpoint>(), size_of::<EndpointEntry>()),
    pinned(MAP_PREFIX_FORWARD, Object::Rewrite, MapType::LpmTrie, LPM_KEY, size_of::<PrefixEntry>()),
    pinned(MAP_PREFIX_REVERSE, Object::Rewrite, MapType::LpmTrie, LPM_KEY, size_of::<PrefixEntry>()),
    pinned(MAP_TABLES_IN_USE, Object::Rewrite, MapType::Array, INDEX, size_of::<TablesInUse>()),
    pinned(MAP_ADDR_FILTER, Object::Rewrite, MapType::Array, INDEX, size_of::<u64>()),
    pinned(MAP_COUNTERS, Object::Rewrite, MapType::PerCpuArray, INDEX, size_of::<u64>()),
    pinned(MAP_ICMP_ERRORS, Object::Rewrite, MapType::ProgramArray, INDEX, size_of::<u32>()),
    pinned(MAP_BOUNCE_XDP, Object::Rewrite, MapType::ProgramArray, INDEX, size_of::<u32>()),
    pinned(MAP_GATE_SETTINGS, Object::Rewrite, MapType::Array, INDEX, size_of::<GateSettings>()),
    pinned(MAP_GATE_PORTS, Object::Rewrite, MapType::Array, INDEX, size_of::<u32>()),
    pinned(MAP_GATE_ALLOW, Object::Rewrite, MapType::LpmTrie, LPM_KEY, size_of::<u32>()),
    pinned(MAP_GATE_COUNTERS, Object::Rewrite, MapType::PerCpuArray, INDEX, size_of::<u64>()),
    pinned(MAP_GATE_LOG, Object::Rewrite, MapType::RingBuf, 0, 0),
    pinned(MAP_GATE_LOG_LEASE, Object::Rewrite, MapType::Array, INDEX, size_of::<u64>()),
    private("GATE_SAMPLED_AT", Object::Rewrite, MapType::PerCpuArray, size_of::<u64>()),
    pinned(MAP_TRACE_LEASE, Object::Rewrite, MapType::Array, INDEX, size_of::<u64>()),
    pinned(MAP_TRACE_CONTROL, Object::Rewrite, MapType::Array, INDEX, size_of::<TraceControl>()),
    pinned(MAP_TRACE_RING, Object::Rewrite, MapType::RingBuf, 0, 0),
    pinned(MAP_TRACE_BUDGET, Object::Rewrite, MapType::PerCpuArray, INDEX, size_of::<TraceBudget>()),
    private("SCRATCH", Object::Rewrite, MapType::PerCpuArray, 0),
    pinned(MAP_BOUNCE_SERVICES, Object::Bounce, MapType::Hash, size_of::<Endpoint>(), size_of::<BounceService>()),
    pinned(MAP_BOUNCE_FLOWS, Object::Bounce, MapType::LruHash, size_of::<FlowTuple>(), size_of::<FlowEntry>()),
    pinned(MAP_BOUNCE_SETTINGS, Object::Bounce, MapType::Array, INDEX, size_of::<BounceSettings>()),
    pinned(MAP_BOUNCE_COUNTERS, Object::Bounce, MapType::PerCpuArray, INDEX, size_of::<u64>()),
    pinned(MAP_BOUNCE_EVENTS, Object::Bounce, MapType::RingBuf, 0, 0),
    pinned(MAP_BOUNCE_LOG_LEASE, Object::Bounce, MapType::Array, INDEX, size_of::<u64>()),
    private("BOUNCE_SCRATCH", Object::Bounce, MapType::PerCpuArray, 0),
    private("BOUNCE_PARSED", Object::Bounce, MapType::PerCpuArray, 0),
];

/// A pinned map. Sizes are small constants, so the casts cannot truncate.
#[expect(clippy::cast_possible_truncation, reason = "sizes of small map types")]
const fn pinned(name: &'static str, object: Object, map_type: MapType, key: usize, value: usize) -> MapSpec {
    MapSpec { name, object, map_type, key_size: key as u32, value_size: value as u32, pinned: true }
}

/// A map private to each load of its object: per-CPU scratch space whose value type
/// the programs own (`value` 0: its size is the programs' business, not checked here).
#[expect(clippy::cast_possible_truncation, reason = "sizes of small map types")]
const fn private(name: &'static str, object: Object, map_type: MapType, value: usize) -> MapSpec {
    MapSpec { name, object, map_type, key_size: INDEX as u32, value_size: value as u32, pinned: false }
}

/// The registered map of that name.
pub fn map(name: &str) -> Option<&'static MapSpec> {
    MAPS.iter().find(|map| map.name == name)
}

/// The pinned maps of `object`, in registry order.
pub fn pinned_maps(object: Object) -> impl Iterator<Item = &'static MapSpec> {
    MAPS.iter().filter(move |map| map.object == object && map.pinned)
}

/// The programs of `object`.
pub fn programs(object: Object) -> impl Iterator<Item = &'static ProgramSpec> {
    PROGRAMS.iter().filter(move |program| program.object == object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (index, map) in MAPS.iter().enumerate() {
            assert!(MAPS[index + 1..].iter().all(|other| other.name != map.name), "{} twice", map.name);
        }
        for (index, program) in PROGRAMS.iter().enumerate() {
            assert!(PROGRAMS[index + 1..].iter().all(|other| other.name != program.name), "{} twice", program.name);
        }
    }
}
