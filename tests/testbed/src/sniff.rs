//! A packet sniffer on one interface (AF_PACKET), recording the source address of every IPv4 and
//! IPv6 packet the host receives. The e2e tests use it to prove the client only ever hears from
//! the VIP, which `peer_addr` alone cannot show.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use crate::Netns;

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

pub struct Sniffer {
    stop: Arc<AtomicBool>,
    sources: Arc<Mutex<BTreeSet<IpAddr>>>,
    thread: Option<JoinHandle<u64>>,
}

impl Sniffer {
    /// Starts capturing on `dev` in `ns`.
    pub fn start(ns: &Netns, dev: &str) -> Sniffer {
        let fd = ns.enter(|| unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (ETH_P_ALL.to_be()) as libc::c_int,
            )
        });
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let ifindex = ns
            .exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
            .trim()
            .parse::<i32>()
            .expect("ifindex");
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex;
            let rc = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sources = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, src) = (stop.clone(), sources.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut seen = 0u64;
            while !s.load(Ordering::Relaxed) {
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut sll as *mut _ as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n < 14 || sll.sll_pkttype == PACKET_OUTGOING {
                    continue;
                }
                if let Some(ip) = source(&buf[..n as usize]) {
                    seen += 1;
                    src.lock().unwrap().insert(ip);
                }
            }
            unsafe { libc::close(fd) };
            seen
        });
        Sniffer {
            stop,
            sources,
            thread: Some(thread),
        }
    }

    /// Stops capturing; returns the distinct source addresses and how many IP packets were seen.
    pub fn finish(mut self) -> (BTreeSet<IpAddr>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.take().unwrap().join().unwrap();
        (self.sources.lock().unwrap().clone(), seen)
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The source address of an Ethernet frame carrying IPv4 or IPv6 (TCP or UDP only).
fn source(frame: &[u8]) -> Option<IpAddr> {
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = &frame[14..];
    match ether_type {
        0x0800 if ip.len() >= 20 && (ip[9] == 6 || ip[9] == 17) => {
            Some(IpAddr::from([ip[12], ip[13], ip[14], ip[15]]))
        }
        0x86dd if ip.len() >= 40 && (ip[6] == 6 || ip[6] == 17) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[8..24]);
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}
