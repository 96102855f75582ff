//! `understudy decap`: the backend side of `mode = "tunnel"`. It loads the small decapsulator
//! (`lb-ebpf`'s `understudy_decap`, its own object, so a backend creates none of the balancer's
//! maps), tells it this host's addresses (the outer destinations to strip), the VIPs it serves
//! and the GUE port, and attaches it to one interface. The maps and the link are pinned under
//! `/sys/fs/bpf/understudy-decap/<interface>`, so a restart (or a crash) of the process leaves
//! decapsulation running, and the next start adopts it, as the balancer's daemon does.
//!
//! It does not need the kernel's `ipip` or `fou` modules, and works beside them: the program
//! sees the packet first, and what it strips never reaches them.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode},
    },
};
use lb_common::{
    addr_words,
    forwarding::{DecapAddr, DecapConfig, DecapCounter, decap_map_names::*},
};

/// The decapsulator's object, built by build.rs from `lb-ebpf`.
pub static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/understudy-decap"));

pub const DECAP_PROGRAM: &str = "understudy_decap";

/// Where each interface's pins live unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/understudy-decap";

/// The loaded decapsulator.
pub struct Decap {
    ebpf: Ebpf,
    pin: Option<PathBuf>,
}

fn key(ip: IpAddr) -> DecapAddr {
    let (addr, family) = addr_words(ip);
    DecapAddr {
        addr,
        family,
        _pad: [0; 3],
    }
}

impl Decap {
    /// Loads the object, reusing the maps pinned in `pin` if a previous process left them.
    pub fn load(pin: Option<&Path>) -> anyhow::Result<Decap> {
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pin {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for name in [DECAP_VIPS, DECAP_ADDRS, DECAP_CONFIG, DECAP_COUNTERS] {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(DECAP_OBJECT)
            .context("loading the decapsulator")?;
        let prog: &mut Xdp = ebpf
            .program_mut(DECAP_PROGRAM)
            .context("the decapsulator's program is missing from its object")?
            .try_into()?;
        prog.load().context("the kernel refused the decapsulator")?;
        Ok(Decap {
            ebpf,
            pin: pin.map(Path::to_path_buf),
        })
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(DECAP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Decap::load")
    }

    /// Replaces what the program strips: outer destinations `addresses`, inner destinations
    /// `vips`, and GUE on `gue_port` (0: GUE is not stripped). Entries are added before stale
    /// ones go, so a change never drops a packet that both sets accept.
    pub fn configure(
        &mut self,
        addresses: &[IpAddr],
        vips: &[IpAddr],
        gue_port: u16,
    ) -> anyhow::Result<()> {
        for (name, wanted) in [(DECAP_ADDRS, addresses), (DECAP_VIPS, vips)] {
            let mut map: HashMap<&mut MapData, DecapAddr, u8> =
                HashMap::try_from(self.ebpf.map_mut(name).context(name)?)?;
            let keep: HashSet<DecapAddr> = wanted.iter().map(|ip| key(*ip)).collect();
            for k in &keep {
                map.insert(k, 1, 0)
                    .with_context(|| format!("writing {name}"))?;
            }
            let stale: Vec<DecapAddr> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !keep.contains(k))
                .collect();
            for k in stale {
                map.remove(&k).with_context(|| format!("pruning {name}"))?;
            }
        }
        let mut config: Array<&mut MapData, DecapConfig> =
            Array::try_from(self.ebpf.map_mut(DECAP_CONFIG).context(DECAP_CONFIG)?)?;
        config.set(
            0,
            DecapConfig {
                gue_port: gue_port.to_be(),
                _pad: [0; 6],
            },
            0,
        )?;
        Ok(())
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<(DecapCounter, u64)>> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(DECAP_COUNTERS).context(DECAP_COUNTERS)?)?;
        DecapCounter::ALL
            .iter()
            .map(|c| Ok((*c, map.get(&(*c as u32), 0)?.iter().sum())))
            .collect()
    }

    /// Attaches to `ifindex`, or takes over the link a previous process pinned (the program is
    /// swapped in atomically). Returns "native", "generic" or "adopted".
    pub fn attach(
        &mut self,
        interface: &str,
        ifindex: u32,
        generic: bool,
    ) -> anyhow::Result<&'static str> {
        let link_pin = self.pin.as_ref().map(|d| d.join("link"));
        if let Some(path) = &link_pin
            && path.exists()
        {
            let link = PinnedLink::from_pin(path)
                .map_err(anyhow::Error::from)
                .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(anyhow::Error::from));
            match link {
                Ok(link) => {
                    self.program().attach_to_link(link)?;
                    return Ok("adopted");
                }
                Err(e) => {
                    tracing::warn!(interface, error = %e, "cannot adopt the pinned decap link; attaching afresh");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let tries: &[(XdpMode, &'static str)] = if generic {
            &[(XdpMode::Skb, "generic")]
        } else {
            &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")]
        };
        let mut last = None;
        for &(mode, label) in tries {
            match self.program().attach_to_if_index(ifindex, mode) {
                Ok(id) => {
                    if let Some(path) = &link_pin {
                        let link = FdLink::try_from(self.program().take_link(id)?)?;
                        // The pin keeps the link (and the program) after this process exits.
                        std::mem::forget(
                            link.pin(path)
                                .with_context(|| format!("pinning {}", path.display()))?,
                        );
                    }
                    return Ok(label);
                }
                Err(e) => last = Some(e),
            }
        }
        bail!(
            "attaching the decapsulator to {interface} failed: {}",
            last.map_or_else(|| "no mode to try".to_string(), |e| e.to_string())
        )
    }
}

/// The addresses configured on `interface` (outer destinations this host accepts).
pub fn interface_addresses(interface: &str) -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: a list getifaddrs returned, freed below.
        let entry = unsafe { &*at };
        at = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        if name.to_bytes() != interface.as_bytes() {
            continue;
        }
        match unsafe { (*entry.ifa_addr).sa_family } as i32 {
            libc::AF_INET => {
                let sa = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(sa.sin_addr.s_addr.to_ne_bytes()));
            }
            libc::AF_INET6 => {
                let sa = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sa.sin6_addr.s6_addr));
            }
            _ => {}
        }
    }
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// What `understudy decap` was asked to do.
pub struct DecapArgs {
    pub interface: String,
    pub vips: Vec<IpAddr>,
    /// Outer destinations to strip; empty: the interface's own addresses.
    pub addresses: Vec<IpAddr>,
    /// 0 turns GUE off.
    pub gue_port: u16,
    pub generic: bool,
    pub pin_root: PathBuf,
}

/// Attaches (or adopts and reconfigures) the decapsulator, then logs its counters as they move
/// until SIGINT or SIGTERM. It stays attached after: `understudy decap --stop` removes it.
pub fn run(args: DecapArgs) -> anyhow::Result<()> {
    let index = std::ffi::CString::new(args.interface.as_str())
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
        .unwrap_or(0);
    if index == 0 {
        bail!(
            "there is no interface \"{}\" on this host (see `ip link`)",
            args.interface
        );
    }
    if args.vips.is_empty() {
        bail!("no --vip given: name every VIP this backend serves (anything else is dropped)");
    }
    let addresses = if args.addresses.is_empty() {
        interface_addresses(&args.interface)
            .with_context(|| format!("reading the addresses of {}", args.interface))?
    } else {
        args.addresses.clone()
    };
    if addresses.is_empty() {
        bail!(
            "{} has no address, so no tunnel can reach it: add one, or name the outer destination with --address",
            args.interface
        );
    }
    // The stop signals are caught from before the link is pinned: a SIGTERM as soon as the pin
    // appears (a supervisor, a test) ends the process cleanly, not by the signal's default.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let pin = args.pin_root.join(&args.interface);
    let mut decap = Decap::load(Some(&pin))?;
    decap.configure(&addresses, &args.vips, args.gue_port)?;
    let mode = decap.attach(&args.interface, index, args.generic)?;
    tracing::info!(
        interface = %args.interface,
        mode,
        addresses = ?addresses,
        vips = ?args.vips,
        gue_port = args.gue_port,
        pins = %pin.display(),
        "decapsulating IPIP{} to this host for the VIPs",
        if args.gue_port != 0 { " and GUE" } else { "" }
    );
    rt.block_on(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        let mut last: Vec<(DecapCounter, u64)> = Vec::new();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = every.tick() => {
                    let now = decap.counters()?;
                    if now != last {
                        let moved: Vec<String> = now.iter().filter(|(_, n)| *n > 0).map(|(c, n)| format!("{} {n}", c.name())).collect();
                        if now.iter().any(|(c, n)| *c == DecapCounter::DropForeignVip && last.iter().any(|(l, m)| l == c && m < n)) {
                            tracing::warn!(counters = %moved.join(", "), "encapsulated packets for an address that is no VIP of this backend were dropped: check the balancer's backends and this host's --vip list");
                        } else {
                            tracing::info!(counters = %moved.join(", "), "decap");
                        }
                        last = now;
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!(interface = %args.interface, "stopping; decapsulation stays attached (pinned) until `understudy decap --stop`");
    Ok(())
}

/// Removes the decapsulator from `interface`: its pinned link and maps go, and with them the
/// program.
pub fn stop(interface: &str, pin_root: &Path) -> anyhow::Result<bool> {
    let dir = pin_root.join(interface);
    if !dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    // The root too, once no interface is left under it (it may be shared: not an error).
    let _ = std::fs::remove_dir(pin_root);
    Ok(true)
}
