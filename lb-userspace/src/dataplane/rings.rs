//! The daemon's view of `RINGS`: one memory mapping per service, over the pages its ring slots
//! occupy, made when the service is first written and dropped when it is removed.
//!
//! Why not one mapping of the whole map: `RINGS` holds `MAX_SERVICES` × `RING_SLOTS` ×
//! `MAX_RING_SIZE` entries (64 MiB), and the kernel populates every page of a BPF array mapping
//! when it is made, so a whole-map mapping put 64 MiB into the daemon's RSS whatever the config
//! (most of a 130 MiB daemon). A window costs what the service's two slots do (513 KiB at the
//! default table size). Because the pages are populated at `mmap` time, a window is made when a
//! service is installed (start, reload, adoption), and no failover's write takes a page fault.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::MapData;
use lb_common::{MAX_RING_SIZE, RING_SLOTS, ring_index};
use memmap2::{MmapMut, MmapOptions};

use super::DataplaneError;

/// Byte range of one service's slots in `RINGS`, widened to whole pages: (offset of the
/// mapping, its length, where slot 0 starts within it).
fn window_of(service: u32) -> (u64, usize, usize) {
    let page = page_size();
    let start = ring_index(service, 0, 0) as usize * 4;
    let end = (ring_index(service, RING_SLOTS - 1, 0) + MAX_RING_SIZE) as usize * 4;
    let offset = start / page * page;
    let len = end.div_ceil(page) * page - offset;
    (offset as u64, len, start - offset)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

/// Maps `service`'s window of `map`. The kernel fills its pages now.
fn map_window(map: &MapData, service: u32) -> Result<Window, DataplaneError> {
    let (offset, len, skip) = window_of(service);
    // SAFETY: the kernel owns this memory and keeps it alive while it is mapped; the program only
    // reads it, and only a service's idle slot is written.
    let mmap = unsafe {
        MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_mut(map.fd().as_fd().as_raw_fd())
    }
    .map_err(DataplaneError::Mmap)?;
    Ok(Window { mmap, skip })
}

struct Window {
    mmap: MmapMut,
    /// Where the service's slot 0 starts in `mmap`.
    skip: usize,
}

/// `RINGS` and the windows mapped on it.
pub struct Rings {
    map: MapData,
    windows: HashMap<u32, Window>,
}

impl Rings {
    pub fn new(map: MapData) -> Rings {
        Rings {
            map,
            windows: HashMap::new(),
        }
    }

    /// The first `len` entries of `service`'s `slot`, as bytes, to write.
    pub fn slot_mut(
        &mut self,
        service: u32,
        slot: u32,
        len: usize,
    ) -> Result<&mut [u8], DataplaneError> {
        let w = match self.windows.entry(service) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(map_window(&self.map, service)?)
            }
        };
        let at = w.skip + ring_index(0, slot, 0) as usize * 4;
        Ok(&mut w.mmap[at..at + len * 4])
    }

    /// The first `len` entries of `service`'s `slot`, read through its window, or through a
    /// mapping made for this read when the service has none here (an adopted service this
    /// process has not written yet).
    pub fn read(&self, service: u32, slot: u32, len: usize) -> Result<Vec<u32>, DataplaneError> {
        let temporary;
        let w = match self.windows.get(&service) {
            Some(w) => w,
            None => {
                temporary = map_window(&self.map, service)?;
                &temporary
            }
        };
        let at = w.skip + ring_index(0, slot, 0) as usize * 4;
        Ok(w.mmap[at..at + len * 4]
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Unmaps `service`'s window (it was removed; its id may come back with a reload).
    pub fn forget(&mut self, service: u32) {
        self.windows.remove(&service);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::MAX_SERVICES;

    #[test]
    fn a_window_covers_both_slots_of_its_service_and_is_page_aligned() {
        let page = page_size();
        for service in [0, 1, 2, 63, MAX_SERVICES - 1] {
            let (offset, len, skip) = window_of(service);
            assert_eq!(offset as usize % page, 0);
            assert_eq!(len % page, 0);
            let start = offset as usize + skip;
            assert_eq!(start, ring_index(service, 0, 0) as usize * 4);
            let end = (ring_index(service, RING_SLOTS - 1, 0) + MAX_RING_SIZE) as usize * 4;
            assert!(offset as usize + len >= end, "service {service}");
            assert!(
                offset as usize + len - end < page,
                "no more than a page past the end"
            );
            // Two slots of 65,537 entries: about 513 KiB, not the whole map.
            assert!(len <= 2 * MAX_RING_SIZE as usize * 4 + 2 * page);
        }
    }
}
