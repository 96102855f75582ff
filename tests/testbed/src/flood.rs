//! A bounded SYN flood from a raw socket: `count` TCP SYNs to one address and port, each from a
//! different spoofed source in 198.18.0.0/15 (RFC 2544's benchmarking range, which nothing
//! routes) and a different port, with valid checksums, so the balancer sees each as a new flow.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::PacketBuilder;

use crate::Netns;

/// Sends `count` spoofed SYNs to `to` from inside `ns`; returns how many the socket took.
pub fn syn_flood(ns: &Netns, to: SocketAddrV4, count: u32) -> u32 {
    ns.enter(|| {
        // SAFETY: plain socket calls on a descriptor this function owns and closes.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let mut sent = 0;
        let mut packet = Vec::with_capacity(64);
        for i in 0..count {
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) | (i & 0x1_ffff));
            let sport = 1024 + (i >> 17) as u16 * 7 + (i % 60_000) as u16;
            packet.clear();
            PacketBuilder::ipv4(src.octets(), to.ip().octets(), 64)
                .tcp(sport, to.port(), i, 64_240)
                .syn()
                .write(&mut packet, &[])
                .expect("build a SYN");
            let n = unsafe {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n == packet.len() as isize {
                sent += 1;
            }
        }
        unsafe { libc::close(fd) };
        sent
    })
}
