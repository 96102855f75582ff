//! Counting the frames the kernel drops after the program redirected them (see the kernel side,
//! `lb-ebpf/src/redirect_drops.rs`): the tracepoint program attached to `xdp:xdp_devmap_xmit`,
//! and its per-interface totals.

use std::collections::BTreeMap;

use aya::{
    maps::PerCpuHashMap,
    programs::{ProgramError, TracePoint},
};
use lb_common::map_names::REDIRECT_DROPS;

use super::Dataplane;

/// The tracepoint programs of the object, and the events they count.
pub const PROGRAMS: [(&str, &str); 2] = [
    ("understudy_redirect_errors", "xdp_redirect_err"),
    ("understudy_xmit_drops", "xdp_devmap_xmit"),
];

/// Where tracefs is expected; the kernel's tracepoint ids are read from it.
const TRACEFS: &str = "/sys/kernel/tracing";

impl Dataplane {
    /// Attaches the redirect-drop counter. Tracepoints need tracefs: when it is not mounted
    /// (a minimal host or container), it is mounted at `/sys/kernel/tracing`, as systemd does at
    /// boot. An error says why drops will not be counted; the data path works regardless.
    pub fn count_redirect_drops(&mut self) -> Result<(), String> {
        // Before the first attach: aya looks for tracefs once and remembers the answer.
        let mounted = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .any(|d| std::path::Path::new(d).join("events").exists());
        if !mounted {
            mount_tracefs()?;
        }
        for (name, event) in PROGRAMS {
            let prog: &mut TracePoint = self
                .ebpf_mut()
                .program_mut(name)
                .ok_or_else(|| format!("the object has no program {name}"))?
                .try_into()
                .map_err(|e: ProgramError| e.to_string())?;
            prog.load().map_err(|e| format!("loading {name}: {e}"))?;
            prog.attach("xdp", event)
                .map_err(|e| format!("attaching to xdp:{event}: {e}"))?;
        }
        Ok(())
    }

    /// Frames dropped after a redirect, by target interface index, since the daemon started.
    pub fn redirect_drops(&self) -> BTreeMap<u32, u64> {
        let Some(map) = self.ebpf().map(REDIRECT_DROPS) else {
            return BTreeMap::new();
        };
        let Ok(map) = PerCpuHashMap::<_, u32, u64>::try_from(map) else {
            return BTreeMap::new();
        };
        map.iter()
            .filter_map(Result::ok)
            .map(|(ifindex, per_cpu)| (ifindex, per_cpu.iter().sum()))
            .collect()
    }
}

fn mount_tracefs() -> Result<(), String> {
    if std::path::Path::new(TRACEFS).join("events").exists() {
        return Err(format!(
            "tracefs is mounted at {TRACEFS}, yet the tracepoint is missing"
        ));
    }
    let target = std::ffi::CString::new(TRACEFS).map_err(|e| e.to_string())?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {} (mount -t tracefs \
             tracefs {TRACEFS})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The name of interface `ifindex` in this network namespace.
pub fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the size if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `buf`.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
