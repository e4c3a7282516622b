//! The eBPF object loaded for BPF_PROG_TEST_RUN: maps pinned in a private bpffs
//! directory, the programs a test needs loaded into the kernel, and one way to run them.

use aya::maps::{Array, MapData, RingBuf};
use aya::{
    Ebpf,
    programs::{Program, ProgramError, TestRun as _, TestRunOptions},
};
use rewrite_common::trace::{
    ALL_HOOKS, MAP_TRACE_CONTROL, MAP_TRACE_LEASE, MAP_TRACE_RING, TraceControl, TraceFilter, TraceRecord,
};
use rewrite_user::{
    dataplane::{
        objects::{self, open_pinned},
        pins::PinLayout,
        ring::monotonic_ns,
    },
    table::live::MappingTable,
};

use crate::netns::PinDir;

pub struct LoadedObject {
    /// Removed on drop, which frees the maps.
    pub pins: PinDir,
    pub layout: PinLayout,
    pub ebpf: Ebpf,
}

/// What a run returned: the program's verdict and the packet as it left.
#[derive(Debug)]
pub struct RunResult {
    pub verdict: u32,
    pub output: Vec<u8>,
}

impl std::fmt::Debug for LoadedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedObject").field("pins", &self.pins).finish_non_exhaustive()
    }
}

impl LoadedObject {
    /// Loads the object with fresh pinned maps (`max_mappings` as `attach --max-mappings`)
    /// and loads `programs` into the kernel, panicking with the verifier's reason.
    /// The ICMP-error programs, which the TC programs tail-call, are loaded and put in
    /// their array too, as `attach` does.
    pub fn new(tag: &str, max_mappings: Option<u32>, programs: &[&str]) -> Self {
        let mut object = Self::load_with(tag, programs, |maps_dir| {
            objects::load(maps_dir, max_mappings).expect("load the eBPF object")
        });
        objects::install_icmp_errors(&mut object.ebpf).expect("load the ICMP-error programs into their array");
        object
    }

    /// The same for the bounce object, with room for `max_flows` flows.
    pub fn bounce(tag: &str, max_flows: u32, programs: &[&str]) -> Self {
        Self::load_with(tag, programs, |maps_dir| {
            objects::load_bounce(maps_dir, Some(max_flows)).expect("load the bounce object")
        })
    }

    fn load_with(tag: &str, programs: &[&str], load: impl FnOnce(&std::path::Path) -> Ebpf) -> Self {
        let pins = PinDir::new(tag);
        let layout = PinLayout::new(pins.path());
        layout.create_dir(&layout.maps_dir()).expect("create the pin directory on bpffs");
        let mut ebpf = load(&layout.maps_dir());
        for &name in programs {
            let result = match ebpf.program_mut(name) {
                Some(Program::Xdp(program)) => program.load(),
                Some(Program::SchedClassifier(program)) => program.load(),
                other => panic!("{name} is not an XDP or TC program in the object: {other:?}"),
            };
            result.unwrap_or_else(|error| panic!("the verifier rejects {name}: {error:?}"));
        }
        Self { pins, layout, ebpf }
    }

    pub fn table(&self) -> MappingTable {
        MappingTable::open(&self.layout).expect("open the pinned maps")
    }

    /// Runs `program` on `input` `repeat` times (0 and 1 both mean once) with
    /// BPF_PROG_TEST_RUN. Returns the verdict, the output frame and the mean time per run.
    pub fn test_run(
        &self,
        program: &str,
        input: &[u8],
        repeat: u32,
    ) -> Result<(RunResult, std::time::Duration), ProgramError> {
        let mut output = vec![0u8; input.len() + 256];
        let options =
            TestRunOptions { data_in: Some(input), data_out: Some(&mut output), repeat, ..TestRunOptions::default() };
        let result = match self.ebpf.program(program) {
            Some(Program::Xdp(program)) => program.test_run(options)?,
            Some(Program::SchedClassifier(program)) => program.test_run(options)?,
            other => panic!("{program} is not an XDP or TC program in the object: {other:?}"),
        };
        output.truncate(result.data_size_out as usize);
        Ok((RunResult { verdict: result.return_value, output }, result.duration))
    }
}

/// Creates a BPF hash map with the given sizes and pins it at `path`, straight through
/// the bpf(2) syscall: a map of a layout no build of rewrite has, to check that
/// loading over it is refused.
pub fn pin_foreign_hash_map(path: &std::path::Path, key_size: u32, value_size: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, key_size, value_size, 16]);
    // SAFETY: bpf(2) reads `size` bytes of a zero-padded, correctly laid out attribute.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, create.as_ptr(), std::mem::size_of_val(&create)) };
    assert!(fd >= 0, "BPF_MAP_CREATE failed: {}", std::io::Error::last_os_error());
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in the path");
    // For BPF_OBJ_PIN: pathname (a pointer as u64), then bpf_fd.
    let mut pin = [0u64; 16];
    pin[0] = name.as_ptr() as u64;
    pin[1] = u64::try_from(fd).expect("a file descriptor");
    // SAFETY: as above; `name` outlives the call.
    let pinned = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_ptr(), std::mem::size_of_val(&pin)) };
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once; the pin keeps the map.
    unsafe { libc::close(i32::try_from(fd).expect("a file descriptor")) };
    assert_eq!(pinned, 0, "BPF_OBJ_PIN {} failed: {error}", path.display());
}

/// The trace maps of a loaded object as a `rewrite trace` reader uses them: the
/// control, the lease and the ring.
pub struct TraceMaps {
    control: Array<MapData, TraceControl>,
    lease: Array<MapData, u64>,
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for TraceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceMaps").finish_non_exhaustive()
    }
}

impl TraceMaps {
    pub fn open(object: &LoadedObject) -> Self {
        let open = |name| open_pinned(&object.layout, name).unwrap_or_else(|error| panic!("open {name}: {error}"));
        Self {
            control: Array::try_from(open(MAP_TRACE_CONTROL)).expect("an array"),
            lease: Array::try_from(open(MAP_TRACE_LEASE)).expect("an array"),
            ring: RingBuf::try_from(open(MAP_TRACE_RING)).expect("a ring buffer"),
        }
    }

    /// A reader on every hook that selects with `filter`, `rate` records per second per
    /// CPU, holding the lease for a minute.
    pub fn turn_on(&mut self, filter: TraceFilter, rate: u32) {
        let control = TraceControl { filter, hooks: ALL_HOOKS, ifindex: 0, per_cpu_per_second: rate };
        self.control.set(0, control, 0).expect("write the control");
        self.set_lease(monotonic_ns() + 60_000_000_000);
    }

    /// No reader.
    pub fn turn_off(&mut self) {
        self.set_lease(0);
    }

    pub fn set_lease(&mut self, until: u64) {
        self.lease.set(0, until, 0).expect("write the lease");
    }

    pub fn lease(&self) -> u64 {
        self.lease.get(&0, 0).expect("read the lease")
    }

    /// The records in the ring, which they leave.
    pub fn records(&mut self) -> Vec<TraceRecord> {
        let mut records = Vec::new();
        while let Some(item) = self.ring.next() {
            assert_eq!(item.len(), size_of::<TraceRecord>(), "a record is written whole");
            // SAFETY: the programs write whole records of plain integers and arrays.
            records.push(unsafe { item.as_ptr().cast::<TraceRecord>().read_unaligned() });
        }
        records
    }
}
