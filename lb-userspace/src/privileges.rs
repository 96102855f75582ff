//! Checks the capabilities `understudy run` needs before it touches the kernel, so a missing one
//! is one clear sentence instead of an EPERM from deep inside the loader.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Loading and attaching XDP needs CAP_BPF (maps and programs), CAP_PERFMON (the verifier's
/// pointer rules for tracing-style helpers) and CAP_NET_ADMIN (attaching to interfaces).
pub const NEEDED: [(u32, &str); 3] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
];

/// The effective capability set of this process, from /proc/self/status.
fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The names of the needed capabilities this process lacks, given its effective set.
pub fn missing_from(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    NEEDED
        .iter()
        .filter(|&&(c, _)| {
            // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as on kernels before 5.8.
            !(has(c) || (c != CAP_NET_ADMIN && has(CAP_SYS_ADMIN)))
        })
        .map(|&(_, name)| name)
        .collect()
}

/// `Err` with the sentence to show when a needed capability is missing.
pub fn check() -> Result<(), String> {
    let missing = missing_from(effective());
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "understudy run needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load and attach its XDP \
         program, and this process lacks {}; run it as root, or grant them with \
         `setcap cap_bpf,cap_perfmon,cap_net_admin+ep {}`",
        missing.join(", "),
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "understudy".into())
    ))
}

/// Raises the soft limit on open files to the hard one: every client connection, upstream
/// connection and probe holds a descriptor, and the usual soft limit of 1024 would cap the proxy
/// near there. Returns the limits now in force, (soft, hard).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = raised;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        assert_eq!(
            missing_from(0),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_from(1 << CAP_NET_ADMIN),
            vec!["CAP_BPF", "CAP_PERFMON"]
        );
        assert!(missing_from((1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)).is_empty());
        assert!(
            missing_from((1 << CAP_NET_ADMIN) | (1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty()
        );
        assert_eq!(missing_from(1 << CAP_SYS_ADMIN), vec!["CAP_NET_ADMIN"]);
    }
}
