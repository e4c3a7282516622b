//! BPF_MAP_DELETE_BATCH, which aya 0.14 does not offer: one system call per chunk of
//! entries instead of one per entry, for bulk removals. Each entry of a batch is still
//! deleted on its own (the kernel takes no lock over the batch): a packet sees every
//! entry either before or after its removal. (Batch updates are not used: they cannot
//! refuse an existing key, and every insert must.)

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{Pod, maps::MapData};

/// From enum bpf_cmd in linux/bpf.h.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per system call: large enough that the call overhead vanishes, small enough
/// that the kernel's copy of the keys and values stays modest.
const CHUNK: usize = 4096;

/// The `batch` member of union bpf_attr.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch stopped after `done` entries.
#[derive(Debug)]
pub struct BatchError {
    pub done: usize,
    pub source: std::io::Error,
}

fn batch(
    command: libc::c_long,
    map: &MapData,
    keys: u64,
    values: u64,
    count: usize,
    elem_flags: u64,
) -> Result<(), (usize, std::io::Error)> {
    let mut attr = BatchAttr {
        keys,
        values,
        count: u32::try_from(count).expect("a chunk fits u32"),
        map_fd: u32::try_from(map.fd().as_fd().as_raw_fd()).expect("a valid descriptor"),
        elem_flags,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a correctly laid out bpf_attr for the batch commands; the key
    // and value pointers cover `count` elements each and outlive the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, &raw mut attr, std::mem::size_of::<BatchAttr>()) };
    if result == 0 { Ok(()) } else { Err((attr.count as usize, std::io::Error::last_os_error())) }
}

/// Deletes every key in `keys`; a missing key is an error (ENOENT) at its position.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), BatchError> {
    let mut done = 0;
    for keys in keys.chunks(CHUNK) {
        batch(BPF_MAP_DELETE_BATCH, map, keys.as_ptr() as u64, 0, keys.len(), 0)
            .map_err(|(in_chunk, source)| BatchError { done: done + in_chunk, source })?;
        done += keys.len();
    }
    Ok(())
}
