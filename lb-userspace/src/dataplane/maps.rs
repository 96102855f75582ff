//! Loading the object and writing its maps. The writer fills a service's idle ring slot through a
//! memory mapping of its part of `RINGS` (plain stores, no syscall per entry), then flips the service's active
//! slot by replacing its `SERVICES` entry: one map update, seen whole or not at all by the kernel.

use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp},
};
use aya_log::EbpfLogger;
use lb_common::{
    BackendInfo, MAX_RING_SIZE, NO_BACKEND, RING_SLOTS, ServiceInfo, ServiceKey, Traffic,
    map_names::{BACKEND_STATS, BACKENDS, COUNTERS, EVENTS, FLOWS, RINGS, SERVICE_STATS, SERVICES},
    ring_entry,
};
use tracing::warn;

use super::{EBPF_OBJECT, XDP_PROGRAM, edge::EdgeMaps, rings::Rings};
use crate::plan::{Plan, PlannedService, Serving};

/// Anything that went wrong between user space and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Kernel(#[from] super::features::Missing),
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
    #[error("cannot pin under {dir}: {why}")]
    Pin { dir: String, why: String },
    #[error("service {service}: ring of {len} entries is larger than {MAX_RING_SIZE}")]
    RingTooLarge { service: String, len: usize },
}

/// The loaded data plane: the object and typed handles on its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: Array<MapData, BackendInfo>,
    rings: Rings,
    pub(super) counters: PerCpuArray<MapData, u64>,
    pub(super) service_stats: PerCpuArray<MapData, Traffic>,
    pub(super) backend_stats: PerCpuArray<MapData, Traffic>,
    /// Access lists, rate limits, the flood guard, refusals and `REVERSE`.
    pub edge: EdgeMaps,
    /// What `SERVICES` holds now, to know each service's idle slot.
    installed: StdHashMap<ServiceKey, ServiceInfo>,
    /// Where maps and links are pinned, when they are.
    pin_dir: Option<std::path::PathBuf>,
    /// Links this process pinned (holding their fds).
    pub(super) pinned_links: Vec<aya::programs::links::PinnedLink>,
}

/// Maps that outlive the daemon when pinned: everything with state worth keeping.
const PERSISTENT_MAPS: &[&str] = &[
    SERVICES,
    BACKENDS,
    RINGS,
    FLOWS,
    SERVICE_STATS,
    BACKEND_STATS,
    COUNTERS,
    EVENTS,
];

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
}

pub(super) fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    T::try_from(take(ebpf, name)?).map_err(|source| DataplaneError::Map { name, source })
}

impl Dataplane {
    /// Loads the embedded object into the kernel (maps created, programs verified on first use).
    /// Nothing is attached.
    pub fn load() -> Result<Dataplane, DataplaneError> {
        Dataplane::open(None, lb_common::FLOWS_CAPACITY)
    }

    /// As [`Dataplane::load`], with `FLOWS` sized for `max_flows` entries.
    pub fn load_sized(max_flows: u32) -> Result<Dataplane, DataplaneError> {
        Dataplane::open(None, max_flows)
    }

    /// Loads with the persistent maps pinned in `dir`, reusing those already there (left by a
    /// daemon that was killed): then `FLOWS` and every other table survive the restart. Returns
    /// whether pinned state was adopted.
    pub fn load_pinned(
        dir: &std::path::Path,
        max_flows: u32,
    ) -> Result<(Dataplane, bool), DataplaneError> {
        let pin_error = |why: String| DataplaneError::Pin {
            dir: dir.display().to_string(),
            why,
        };
        let root = std::path::Path::new("/sys/fs/bpf");
        if dir.starts_with(root) && !is_bpffs(root) {
            return Err(pin_error(
                "/sys/fs/bpf is not a bpf filesystem in this mount namespace; mount it \
                 (`mount -t bpf bpf /sys/fs/bpf`, which `cargo xtask setup` does), and run the daemon \
                 with `nsenter --net=/var/run/netns/NAME` rather than `ip netns exec`, which \
                 remounts /sys and hides it"
                    .into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| pin_error(e.to_string()))?;
        let adopted = dir.join(FLOWS).exists();
        Ok((Dataplane::open(Some(dir), max_flows)?, adopted))
    }

    fn open(pin: Option<&std::path::Path>, max_flows: u32) -> Result<Dataplane, DataplaneError> {
        super::features::check()?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(FLOWS, max_flows);
        if let Some(dir) = pin {
            for name in PERSISTENT_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        // The logger owns the log ring buffer; it must outlive the programs' use of it.
        let logger = EbpfLogger::init(&mut ebpf).ok();
        // RINGS is reached through memory mappings of each service's slots only.
        let rings = match take(&mut ebpf, RINGS)? {
            Map::Array(data) => Rings::new(data),
            _ => return Err(DataplaneError::MissingMap(RINGS)),
        };
        let mut dp = Dataplane {
            services: typed(&mut ebpf, SERVICES)?,
            backends: typed(&mut ebpf, BACKENDS)?,
            counters: typed(&mut ebpf, COUNTERS)?,
            service_stats: typed(&mut ebpf, SERVICE_STATS)?,
            backend_stats: typed(&mut ebpf, BACKEND_STATS)?,
            edge: EdgeMaps::take(&mut ebpf)?,
            rings,
            logger,
            ebpf,
            installed: StdHashMap::new(),
            pin_dir: pin.map(std::path::Path::to_path_buf),
            pinned_links: Vec::new(),
        };
        dp.program(XDP_PROGRAM)?;
        dp.fill_tail_calls()?;
        Ok(dp)
    }

    /// Loads the programs `understudy_xdp` tail-calls (later fragments, tunnels) and puts them
    /// in `PROGRAMS`. An empty slot would pass those packets to the stack, counted as
    /// `err_tail_call`.
    fn fill_tail_calls(&mut self) -> Result<(), DataplaneError> {
        let mut fds = Vec::new();
        for (slot, name) in lb_common::TAIL_PROGRAMS {
            let prog = self.program(name)?;
            let fd = prog
                .fd()
                .map_err(|source| DataplaneError::Program {
                    name: name.to_string(),
                    source,
                })?
                .try_clone()
                .map_err(|e| DataplaneError::Program {
                    name: name.to_string(),
                    source: aya::programs::ProgramError::IOError(e),
                })?;
            fds.push((slot, fd));
        }
        let map = self
            .ebpf
            .map_mut(lb_common::map_names::PROGRAMS)
            .ok_or(DataplaneError::MissingMap(lb_common::map_names::PROGRAMS))?;
        let mut programs =
            aya::maps::ProgramArray::try_from(map).map_err(|source| DataplaneError::Map {
                name: lb_common::map_names::PROGRAMS,
                source,
            })?;
        for (slot, fd) in &fds {
            programs
                .set(*slot, fd, 0)
                .map_err(|source| DataplaneError::Map {
                    name: lb_common::map_names::PROGRAMS,
                    source,
                })?;
        }
        Ok(())
    }

    /// Entries `FLOWS` holds (a pinned map keeps the size it was created with).
    pub fn flows_capacity(&self) -> Result<u32, DataplaneError> {
        let Some(Map::LruHashMap(data)) = self.ebpf.map(FLOWS) else {
            return Err(DataplaneError::MissingMap(FLOWS));
        };
        data.info()
            .map(|i| i.max_entries())
            .map_err(|e| DataplaneError::Map {
                name: FLOWS,
                source: e,
            })
    }

    /// Kernel memory the flow map holds, in bytes (`memlock` in its fdinfo): an LRU map
    /// allocates every entry when it is created.
    pub fn flows_memory(&self) -> Option<u64> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let Some(Map::LruHashMap(data)) = self.ebpf.map(FLOWS) else {
            return None;
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("memlock:"))?
            .trim()
            .parse::<u64>()
            .ok()
    }

    /// Where maps and links are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.pin_dir.as_deref()
    }

    /// The flow `key` as `FLOWS` pins it, if it does.
    pub fn flow(&self, key: &lb_common::FlowKey) -> Option<lb_common::FlowValue> {
        let map = self.ebpf.map(FLOWS)?;
        let flows = HashMap::<_, lb_common::FlowKey, lb_common::FlowValue>::try_from(map).ok()?;
        flows.get(key, 0).ok()
    }

    /// A backend entry as the kernel holds it (after adoption: as the previous daemon left it).
    pub fn backend_entry(&self, id: u32) -> Option<BackendInfo> {
        self.backends.get(&id, 0).ok()
    }

    /// What a previous daemon left: every service entry with the backend ids its active table
    /// names (each entry's backend and alternative, see `lb_common::ring_entry`), and every
    /// backend entry (for `crate::adopt`).
    pub fn pinned(&self) -> crate::adopt::Pinned {
        let services = self
            .services
            .iter()
            .filter_map(Result::ok)
            .map(|(key, info)| {
                let table = self
                    .rings
                    .read(info.id, info.active_slot, info.ring_size as usize)
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|e| [Some(ring_entry::primary(e)), ring_entry::alternative(e)])
                    .flatten()
                    .filter(|&id| id < lb_common::MAX_BACKENDS)
                    .collect();
                (key, info.id, table)
            })
            .collect();
        let backends = (0..lb_common::MAX_BACKENDS)
            .map(|id| {
                self.backends
                    .get(&id, 0)
                    .unwrap_or(crate::plan::EMPTY_BACKEND)
            })
            .collect();
        crate::adopt::Pinned { services, backends }
    }

    /// Takes over the service entries a previous daemon left: their active slots are kept, and
    /// entries not in `keep` are removed (their VIPs no longer balanced).
    pub fn adopt_services(&mut self, keep: &[ServiceKey]) -> Result<(), DataplaneError> {
        let found: Vec<(ServiceKey, ServiceInfo)> =
            self.services.iter().filter_map(Result::ok).collect();
        for (key, info) in found {
            if keep.contains(&key) {
                self.installed.insert(key, info);
            } else {
                self.services
                    .remove(&key)
                    .map_err(|source| DataplaneError::Map {
                        name: SERVICES,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Detaches every pinned link and removes the pinned maps: nothing of this instance stays.
    pub fn unpin(&mut self) {
        self.pinned_links.clear();
        if let Some(dir) = self.pin_dir.take() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// The passive-detection ring buffer, for the daemon's event reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DataplaneError> {
        typed(&mut self.ebpf, EVENTS)
    }

    /// Writes one backend entry.
    pub fn set_backend(&mut self, id: u32, info: &BackendInfo) -> Result<(), DataplaneError> {
        self.backends
            .set(id, info, 0)
            .map_err(|source| DataplaneError::Map {
                name: BACKENDS,
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
            // The verifier gives up with EAGAIN when a signal arrives while it works (a child
            // exiting, a SIGHUP): that is no verdict on the program, so it is asked again.
            let mut tries = 0;
            loop {
                match prog.load() {
                    Ok(()) => break,
                    Err(ProgramError::LoadError { io_error, .. })
                        if io_error.kind() == std::io::ErrorKind::WouldBlock && tries < 5 =>
                    {
                        tries += 1;
                        warn!(
                            program = name,
                            tries, "the verifier was interrupted; loading again"
                        );
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        }
        Ok(prog)
    }

    /// The object itself, read-only.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The object itself, for benchmarks that reach bench-only maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Writes a whole plan: backends first, then each service's ring and entry, so the kernel
    /// never sees a service whose ring names a backend not yet written.
    pub fn install(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        self.edge.install(&plan.edge)?;
        for (id, b) in plan.backends.iter().enumerate() {
            self.set_backend(id as u32, b)?;
        }
        for svc in &plan.services {
            self.install_service(svc)?;
        }
        self.edge.prune(&plan.edge, |_, _| false)
    }

    /// Fills the service's idle ring slot with its planned ring, then makes it active.
    pub fn install_service(&mut self, svc: &PlannedService) -> Result<(), DataplaneError> {
        match &svc.serving {
            Serving::Kernel(_) => self.install_table(svc, &svc.initial_ring()),
            Serving::Proxy => Ok(()),
        }
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
        if let Some(gone) = self.installed.remove(key) {
            if !self.installed.values().any(|i| i.id == gone.id) {
                self.rings.forget(gone.id);
            }
            self.services
                .remove(key)
                .map_err(|source| DataplaneError::Map {
                    name: SERVICES,
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
        self.rings
            .read(svc.id, info.active_slot, info.ring_size as usize)
            .unwrap_or_default()
    }

    /// Runs `write` on the service's idle ring slot (as bytes), then replaces the service entry
    /// with that slot active: one map update the kernel sees whole.
    fn flip(
        &mut self,
        svc: &PlannedService,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<(), DataplaneError> {
        // A proxied service is served by the daemon's sockets: its VIP must reach the stack, so
        // it gets no `SERVICES` entry (its backends' entries are still written).
        let Some(entry) = svc.serving.entry() else {
            return Ok(());
        };
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
        let ring_size = if len == 0 {
            // An empty ring still needs one readable entry: it says "no backend".
            self.rings
                .slot_mut(svc.id, slot, 1)?
                .copy_from_slice(&NO_BACKEND.to_ne_bytes());
            1
        } else {
            write(self.rings.slot_mut(svc.id, slot, len)?);
            len as u32
        };
        let info = ServiceInfo {
            id: svc.id,
            ring_size,
            active_slot: slot,
            flags: entry.flags,
            syn_timeout_ms: entry.syn_timeout_ms,
            forwarding: entry.forwarding,
        };
        self.services
            .insert(svc.key, info, 0)
            .map_err(|source| DataplaneError::Map {
                name: SERVICES,
                source,
            })?;
        self.installed.insert(svc.key, info);
        Ok(())
    }
}

/// Whether `path` is the root of a bpf filesystem.
fn is_bpffs(path: &std::path::Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}
