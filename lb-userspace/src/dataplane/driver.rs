//! What an attached interface's driver needs from the host, said once at start. Some drivers
//! accept the frames XDP redirects into them only under conditions the daemon cannot see from
//! here (a veth's peer lives in another namespace); a frame they refuse is dropped by the kernel
//! after the program counted it as redirected. So the daemon names the condition up front.

use std::ffi::CStr;

/// `struct ethtool_drvinfo` (linux/ethtool.h), as `ETHTOOL_GDRVINFO` fills it.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// The interface's driver name, as `ethtool -i` prints it; `None` when it has none to report.
pub fn driver(interface: &str) -> Option<String> {
    if interface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain integers and byte arrays: all zeros is a valid value.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: an all-zero ifreq is valid; the name fits (checked above) and stays NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(interface.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket used only for this ioctl, closed below; `info` outlives the call.
    let ok = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let r = libc::ioctl(fd, libc::SIOCETHTOOL, &mut req);
        libc::close(fd);
        r == 0
    };
    if !ok {
        return None;
    }
    let name = CStr::from_bytes_until_nul(&info.driver).ok()?;
    Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
}

/// What the host must provide for frames redirected into an interface of this driver, if
/// anything.
pub fn needs(driver: &str) -> Option<&'static str> {
    match driver {
        // veth_xdp_xmit refuses frames unless the peer's receive side runs NAPI: an XDP program
        // on the peer, or GRO on it (kernel 5.13 and later).
        "veth" => Some(
            "frames XDP redirects into a veth are dropped by the kernel unless its peer has an \
             XDP program or GRO on (ethtool -K <peer> gro on in the peer's namespace)",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drvinfo_layout_is_the_kernels() {
        // linux/ethtool.h: 4 + 5 x 32 + 12 + 5 x 4 bytes.
        assert_eq!(std::mem::size_of::<DrvInfo>(), 196);
    }

    #[test]
    fn names_too_long_or_unknown_have_no_driver() {
        assert_eq!(driver("an-interface-name-too-long"), None);
        assert_eq!(driver("no-such-if0"), None);
    }

    #[test]
    fn only_veth_has_a_condition() {
        assert!(needs("veth").is_some_and(|n| n.contains("GRO")));
        assert_eq!(needs("ixgbe"), None);
    }
}
