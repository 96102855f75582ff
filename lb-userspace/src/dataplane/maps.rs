//! Loading the object and writing its maps. The writer fills a service's idle ring slot through a
//! memory mapping of `RINGS` (plain stores, no syscall per entry), then flips the service's active
//! slot by replacing its `SERVICES` entry: one map update, seen whole or not at all by the kernel.

use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp},
};
use aya_log::EbpfLogger;
use lb_common::{
    BackendInfo, MAX_RING_SIZE, NO_BACKEND, RING_SLOTS, RINGS_CHUNKS, RingChunk, ServiceInfo,
    ServiceKey, Traffic, ring_index,
};
use memmap2::{MmapMut, MmapOptions};

use super::{EBPF_OBJECT, XDP_PROGRAM};
use crate::plan::{Plan, PlannedService};

/// Anything that went wrong between user space and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {name}")]
    Program {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("memory-mapping RINGS failed")]
    Mmap(#[source] std::io::Error),
    #[error("service {service}: ring of {len} entries is larger than {MAX_RING_SIZE}")]
    RingTooLarge { service: String, len: usize },
}

/// The loaded data plane: the object and typed handles on its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: Array<MapData, BackendInfo>,
    rings: MmapMut,
    pub(super) counters: PerCpuArray<MapData, u64>,
    pub(super) service_stats: PerCpuArray<MapData, Traffic>,
    pub(super) backend_stats: PerCpuArray<MapData, Traffic>,
    /// What `SERVICES` holds now, to know each service's idle slot.
    installed: StdHashMap<ServiceKey, ServiceInfo>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    T::try_from(take(ebpf, name)?).map_err(|source| DataplaneError::Map { name, source })
}

impl Dataplane {
    /// Loads the embedded object into the kernel (maps created, programs verified on first use).
    /// Nothing is attached.
    pub fn load() -> Result<Dataplane, DataplaneError> {
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(DataplaneError::Load)?;
        // The logger owns the log ring buffer; it must outlive the programs' use of it.
        let logger = EbpfLogger::init(&mut ebpf).ok();
        // RINGS stays reachable through its memory mapping only.
        let rings_map = match take(&mut ebpf, "RINGS")? {
            Map::Array(data) => data,
            _ => return Err(DataplaneError::MissingMap("RINGS")),
        };
        let rings = map_rings(&rings_map)?;
        let mut dp = Dataplane {
            services: typed(&mut ebpf, "SERVICES")?,
            backends: typed(&mut ebpf, "BACKENDS")?,
            counters: typed(&mut ebpf, "COUNTERS")?,
            service_stats: typed(&mut ebpf, "SERVICE_STATS")?,
            backend_stats: typed(&mut ebpf, "BACKEND_STATS")?,
            rings,
            logger,
            ebpf,
            installed: StdHashMap::new(),
        };
        dp.program(XDP_PROGRAM)?;
        Ok(dp)
    }

    /// The passive-detection ring buffer, for the daemon's event reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DataplaneError> {
        typed(&mut self.ebpf, "EVENTS")
    }

    /// Writes one backend entry.
    pub fn set_backend(&mut self, id: u32, info: &BackendInfo) -> Result<(), DataplaneError> {
        self.backends
            .set(id, info, 0)
            .map_err(|source| DataplaneError::Map {
                name: "BACKENDS",
                source,
            })
    }

    /// The logger for the programs' `aya-log` output, for the daemon to drive.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// An XDP program of the object, loaded (verified) on first use.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp, DataplaneError> {
        let err = |source| DataplaneError::Program {
            name: name.to_string(),
            source,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| err(ProgramError::NotLoaded))?
            .try_into()
            .map_err(err)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        Ok(prog)
    }

    /// The object itself, for benchmarks that reach bench-only maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Writes a whole plan: backends first, then each service's ring and entry, so the kernel
    /// never sees a service whose ring names a backend not yet written.
    pub fn install(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        for (id, b) in plan.backends.iter().enumerate() {
            self.set_backend(id as u32, b)?;
        }
        for svc in &plan.services {
            self.install_service(svc)?;
        }
        Ok(())
    }

    /// Fills the service's idle ring slot with its planned ring, then makes it active.
    pub fn install_service(&mut self, svc: &PlannedService) -> Result<(), DataplaneError> {
        self.install_table(svc, &svc.ring)
    }

    /// Fills the service's idle ring slot with `ring`, then makes it active.
    pub fn install_table(
        &mut self,
        svc: &PlannedService,
        ring: &[u32],
    ) -> Result<(), DataplaneError> {
        self.flip(svc, ring.len(), |idle| {
            for (chunk, id) in idle.chunks_exact_mut(4).zip(ring) {
                chunk.copy_from_slice(&id.to_ne_bytes());
            }
        })
    }

    /// Writes only the `changed` (entry, backend id) pairs into the idle slot of a `len`-entry
    /// ring, then makes it active. The caller guarantees the idle slot already holds the new table
    /// everywhere else: it holds the table before the previous flip, so `changed` must cover that
    /// flip's changes and this one's.
    pub fn install_delta(
        &mut self,
        svc: &PlannedService,
        len: usize,
        changed: impl Iterator<Item = (usize, u32)>,
    ) -> Result<(), DataplaneError> {
        self.flip(svc, len, |idle| {
            for (i, id) in changed {
                idle[i * 4..i * 4 + 4].copy_from_slice(&id.to_ne_bytes());
            }
        })
    }

    /// Removes a service's VIP: its packets go to the stack from now on.
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        if self.installed.remove(key).is_some() {
            self.services
                .remove(key)
                .map_err(|source| DataplaneError::Map {
                    name: "SERVICES",
                    source,
                })?;
        }
        Ok(())
    }

    /// The table the kernel uses now for `svc` (its active ring slot), read back from `RINGS`.
    pub fn active_ring(&self, svc: &PlannedService) -> Vec<u32> {
        let Some(info) = self.installed.get(&svc.key) else {
            return Vec::new();
        };
        let start = ring_index(svc.id, info.active_slot, 0) as usize * 4;
        self.rings[start..start + info.ring_size as usize * 4]
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Runs `write` on the service's idle ring slot (as bytes), then replaces the service entry
    /// with that slot active: one map update the kernel sees whole.
    fn flip(
        &mut self,
        svc: &PlannedService,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<(), DataplaneError> {
        if len > MAX_RING_SIZE as usize {
            return Err(DataplaneError::RingTooLarge {
                service: svc.name.clone(),
                len,
            });
        }
        let slot = match self.installed.get(&svc.key) {
            Some(current) => (current.active_slot + 1) % RING_SLOTS,
            None => 0,
        };
        let start = ring_index(svc.id, slot, 0) as usize * 4;
        let ring_size = if len == 0 {
            // An empty ring still needs one readable entry: it says "no backend".
            self.rings[start..start + 4].copy_from_slice(&NO_BACKEND.to_ne_bytes());
            1
        } else {
            write(&mut self.rings[start..start + len * 4]);
            len as u32
        };
        let info = ServiceInfo {
            id: svc.id,
            ring_size,
            active_slot: slot,
            flags: svc.flags,
            syn_timeout_ms: svc.syn_timeout_ms,
            _pad: 0,
        };
        self.services
            .insert(svc.key, info, 0)
            .map_err(|source| DataplaneError::Map {
                name: "SERVICES",
                source,
            })?;
        self.installed.insert(svc.key, info);
        Ok(())
    }
}

fn map_rings(map: &MapData) -> Result<MmapMut, DataplaneError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    // SAFETY: the kernel owns this memory and keeps it alive while mapped; the program only reads
    // it, and a torn read of an idle slot is impossible because a slot is only read once active.
    unsafe {
        MmapOptions::new()
            .len(RINGS_CHUNKS as usize * size_of::<RingChunk>())
            .map_mut(fd)
            .map_err(DataplaneError::Mmap)
    }
}
