//! The two eBPF objects this binary carries: loading them with their maps pinned in (or
//! reused from) the pin directory, checking the pinned maps against the registry of
//! `rewrite_common::pinned`, the program arrays the programs tail-call through, and the
//! verifier's refusals in one line.

use std::{io, path::Path};

use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::Map,
    programs::{SchedClassifier, Xdp},
};
use rewrite_common::{
    bounce::{MAP_BOUNCE_FLOWS, MAP_BOUNCE_SERVICES, MAP_BOUNCE_XDP},
    counters,
    maps::{MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_ICMP_ERRORS, MAP_PORT_FORWARD, MAP_PORT_REVERSE},
    pinned::{self, Object, PROG_TC_EGRESS_ICMP_ERRORS, PROG_TC_ICMP_ERRORS, PROG_XDP_BOUNCE},
};

use crate::{
    Error,
    dataplane::{
        filter::{AddressFilter, BuildFilter},
        pins::PinLayout,
        tc,
    },
};

/// The compiled eBPF object, built by this crate's build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rewrite-ebpf"));

/// Bounce mode's object (rewrite-ebpf's second binary), loaded by the first
/// `rewrite bounce add`.
pub static BOUNCE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rewrite-bounce"));

/// Loads the object with its maps pinned in (or reused from) `maps_dir`, and checks
/// that reused maps have the layout this build expects. `max_mappings` sets the
/// capacity of the mapping maps if this load creates them. Programs are not loaded
/// into the kernel yet: callers load only those they attach or test.
pub fn load(maps_dir: &Path, max_mappings: Option<u32>) -> Result<Ebpf, Error> {
    load_object(EBPF_OBJECT, maps_dir, max_mappings, BuildFilter::IfUnbuilt)
}

/// A loader whose verifier log, when a program is refused, holds the verifier's whole
/// reasoning (the default stops at errors and statistics): `--verbose` prints it.
fn ebpf_loader(maps_dir: &Path) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(maps_dir);
    loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
    loader
}

/// [`load`] for any build of the object (`rewrite upgrade --object`), building the
/// address filter from the maps when `build_filter` says so.
pub fn load_object(
    object: &[u8],
    maps_dir: &Path,
    max_mappings: Option<u32>,
    build_filter: BuildFilter,
) -> Result<Ebpf, Error> {
    if object.is_empty() {
        return Err(Error::BuiltWithoutPrograms);
    }
    let mut loader = ebpf_loader(maps_dir);
    if let Some(capacity) = max_mappings {
        for map in [MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_PORT_FORWARD, MAP_PORT_REVERSE] {
            loader.map_max_entries(map, capacity);
        }
    }
    let ebpf = loader.load(object).map_err(|error| Error::Load(Box::new(error)))?;
    check_map_layout(&ebpf, maps_dir, Object::Rewrite)?;
    // Built from the maps before any program that reads it is attached.
    AddressFilter::build_from(&ebpf, build_filter)?;
    Ok(ebpf)
}

/// Loads the bounce object with its maps pinned in (or reused from) `maps_dir`.
/// `max_flows` sets the flow table's size (two entries per flow) if this load
/// creates it.
pub fn load_bounce(maps_dir: &Path, max_flows: Option<u32>) -> Result<Ebpf, Error> {
    if BOUNCE_OBJECT.is_empty() {
        return Err(Error::BuiltWithoutPrograms);
    }
    let mut loader = ebpf_loader(maps_dir);
    if let Some(flows) = max_flows {
        loader.map_max_entries(MAP_BOUNCE_FLOWS, flows.saturating_mul(2));
    }
    let ebpf = loader.load(BOUNCE_OBJECT).map_err(|error| Error::Load(Box::new(error)))?;
    check_map_layout(&ebpf, maps_dir, Object::Bounce)?;
    Ok(ebpf)
}

/// Loads the programs that rewrite ICMP errors and puts them in the pinned array that
/// the TC rewrite programs hand ICMP errors to. Called before any TC program of `ebpf`
/// is attached, so that no packet finds the slots empty.
pub fn install_icmp_errors(ebpf: &mut Ebpf) -> Result<(), Error> {
    let mut programs = Vec::new();
    for (direction, program) in
        [(counters::INGRESS, PROG_TC_ICMP_ERRORS), (counters::EGRESS, PROG_TC_EGRESS_ICMP_ERRORS)]
    {
        let classifier: &mut SchedClassifier = typed_program(ebpf, program, TAIL_CALL)?;
        if classifier.fd().is_err() {
            classifier.load().map_err(|source| program_error("loading", program, TAIL_CALL, source))?;
        }
        let fd = classifier
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
            .map_err(|source| program_error("loading", program, TAIL_CALL, source))?;
        programs.push((direction, fd));
    }
    let map = ebpf.map_mut(MAP_ICMP_ERRORS).ok_or(Error::NotLoaded { path: MAP_ICMP_ERRORS.into() })?;
    let mut array = aya::maps::ProgramArray::try_from(map).map_err(|source| Error::map(MAP_ICMP_ERRORS, source))?;
    for (direction, fd) in &programs {
        array.set(*direction, fd, 0).map_err(|source| Error::map(MAP_ICMP_ERRORS, source))?;
    }
    Ok(())
}

/// The pinned map `name`, or [`Error::NotLoaded`] if the dataplane has none.
pub fn open_pinned(pins: &PinLayout, name: &'static str) -> Result<Map, Error> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(Error::NotLoaded { path });
    }
    let data = aya::maps::MapData::from_pin(&path).map_err(|source| Error::map(name, source))?;
    Map::from_map_data(data).map_err(|source| Error::map(name, source))
}

/// How many mappings the pinned table has room for (the address maps' capacity, set
/// by the attach that created them).
pub fn table_capacity(pins: &PinLayout) -> Result<u32, Error> {
    aya::maps::MapData::from_pin(pins.map(MAP_ADDR_FORWARD))
        .and_then(|data| data.info())
        .map(|info| info.max_entries())
        .map_err(|source| Error::map(MAP_ADDR_FORWARD, source))
}

/// A missing key: lookups report `KeyNotFound`, deletes a plain ENOENT.
pub(crate) fn is_not_found(error: &aya::maps::MapError) -> bool {
    matches!(error, aya::maps::MapError::KeyNotFound) || is_errno(error, libc::ENOENT)
}

pub(crate) fn is_errno(error: &aya::maps::MapError, errno: i32) -> bool {
    matches!(error, aya::maps::MapError::SyscallError(syscall) if syscall.io_error.raw_os_error() == Some(errno))
}

/// What the errors of programs that are not attached to one interface name as theirs.
const TAIL_CALL: &str = "(tail call)";

/// Whether bounce mode is in use here: its maps exist (the first `bounce add` created
/// them), so every attached interface runs the bounce program.
pub fn bounce_enabled(pins: &PinLayout) -> bool {
    pins.map(MAP_BOUNCE_SERVICES).exists()
}

/// Loads the bounce object's XDP program and puts it where the XDP ingress programs
/// tail-call it. The pinned program array holds the program from then on.
pub(crate) fn install_bounce_xdp(ebpf: &mut Ebpf, pins: &PinLayout) -> Result<(), Error> {
    let path = pins.map(MAP_BOUNCE_XDP);
    let xdp: &mut Xdp = typed_program(ebpf, PROG_XDP_BOUNCE, TAIL_CALL)?;
    if xdp.fd().is_err() {
        xdp.load().map_err(|source| program_error("loading", PROG_XDP_BOUNCE, TAIL_CALL, source))?;
    }
    let program = xdp.fd().map_err(|source| program_error("loading", PROG_XDP_BOUNCE, TAIL_CALL, source))?;
    let data = aya::maps::MapData::from_pin(&path).map_err(|source| Error::map(MAP_BOUNCE_XDP, source))?;
    let mut array = aya::maps::ProgramArray::try_from(Map::ProgramArray(data))
        .map_err(|source| Error::map(MAP_BOUNCE_XDP, source))?;
    array.set(0, program, 0).map_err(|source| Error::map(MAP_BOUNCE_XDP, source))
}

/// Checks every pinned map of `object`, as this load found it (a pin of an earlier
/// build, or the map it just created), against the registry: the same type, key size
/// and value size, or the load is refused before any program uses it.
fn check_map_layout(ebpf: &Ebpf, maps_dir: &Path, object: Object) -> Result<(), Error> {
    for expected in pinned::pinned_maps(object) {
        let name = expected.name;
        let map = ebpf.map(name).ok_or_else(|| Error::NotLoaded { path: maps_dir.join(name) })?;
        let info = map_data(map).info().map_err(|source| Error::map(name, source))?;
        let found_type = info.map_type().map_or(u32::MAX, |map_type| map_type as u32);
        let (key_size, value_size) = (info.key_size(), info.value_size());
        if (found_type, key_size, value_size) != (expected.map_type as u32, expected.key_size, expected.value_size) {
            return Err(Error::IncompatibleMap {
                map: name,
                path: maps_dir.join(name),
                map_type: found_type,
                key_size,
                value_size,
                expected_type: expected.map_type as u32,
                expected_key_size: expected.key_size,
                expected_value_size: expected.value_size,
            });
        }
    }
    Ok(())
}

/// The map's data, whatever its type (every type the registry declares).
pub fn map_data(map: &Map) -> &aya::maps::MapData {
    match map {
        Map::HashMap(data)
        | Map::PerCpuArray(data)
        | Map::Array(data)
        | Map::PerCpuHashMap(data)
        | Map::LruHashMap(data)
        | Map::RingBuf(data)
        | Map::LpmTrie(data)
        | Map::ProgramArray(data) => data,
        other => unreachable!("rewrite's object declares no map of type {other:?}"),
    }
}

/// The verifier's reason in a refused program's log: its last line that is not the
/// log's closing statistics, nor an instruction it walked.
fn verifier_reason(log: &str) -> String {
    let is_statistics = |line: &str| {
        ["verification time", "stack depth", "processed ", "max_states_per_insn", "mark_read"]
            .iter()
            .any(|prefix| line.starts_with(prefix))
    };
    let is_instruction =
        |line: &str| line.split_once(':').is_some_and(|(head, _)| head.chars().all(|c| c.is_ascii_digit()));
    log.lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty() && !is_statistics(line) && !is_instruction(line) && !line.starts_with(';'))
        .unwrap_or("no reason in its log")
        .to_owned()
}

pub(crate) fn program_error(
    action: &'static str,
    program: &'static str,
    iface: &str,
    source: aya::programs::ProgramError,
) -> Error {
    match source {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            verifier_refusal(program, &io_error, verifier_log.to_string())
        }
        source => Error::Program { action, program, iface: iface.to_owned(), source: Box::new(source) },
    }
}

/// A program the kernel refused: one line with the verifier's reason, and its whole log
/// kept for `--verbose`.
fn verifier_refusal(program: &'static str, io_error: &io::Error, log: String) -> Error {
    let reason = match verifier_reason(&log) {
        reason if log.trim().is_empty() => format!("{io_error} ({reason})"),
        reason => reason,
    };
    let kernel = tc::kernel().map_or_else(|| "unknown".to_owned(), |version| version.to_string());
    Error::VerifierRefused { program, kernel, reason, log }
}

/// The program `name` of the object as its concrete type (Xdp, SchedClassifier).
pub(crate) fn typed_program<'a, T>(ebpf: &'a mut Ebpf, program: &'static str, iface: &str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or_else(|| program_error("finding", program, iface, aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(|source| program_error("loading", program, iface, source))
}

/// A build's version: the first 12 hex digits of the SHA-256 of its object file.
pub fn object_version(object: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(object).iter().take(6).map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use rewrite_common::pinned::PROG_TC_EGRESS;

    use super::*;

    #[test]
    fn the_verifiers_reason_is_its_last_line_before_the_statistics() {
        let log = "0: (b7) r0 = 0\n; let x = y;\n873: (79) r6 = *(u64 *)(r10 -352)\n\
                   invalid read from stack R10 off=-352 size=8\nverification time 6042596 usec\n\
                   stack depth 0+472+0+0\nprocessed 112045 insns (limit 1000000) max_states_per_insn 12\n";
        assert_eq!(verifier_reason(log), "invalid read from stack R10 off=-352 size=8");
        let log = "1771: (7b) *(u64 *)(r10 -384) = r3\nBPF program is too large. Processed 1000001 insn\n\
                   verification time 15482276 usec\nstack depth 0+472+0+0\n";
        assert_eq!(verifier_reason(log), "BPF program is too large. Processed 1000001 insn");
    }

    #[test]
    fn a_refused_program_is_one_line_and_keeps_the_log_for_verbose() {
        let log = "0: (b7) r0 = 0\nBPF program is too large. Processed 1000001 insn\nprocessed 1000001 insns\n";
        let error = verifier_refusal(PROG_TC_EGRESS, &io::Error::from_raw_os_error(libc::E2BIG), log.to_owned());
        let text = error.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(text.contains("refused program rewrite_tc_egress: BPF program is too large"), "{text}");
        assert!(text.contains("--verbose"), "{text}");
        match error {
            Error::VerifierRefused { log: kept, .. } => assert_eq!(kept, log),
            other => panic!("not a refusal: {other:?}"),
        }
    }
}
