//! Keeps the kernel's next-hop cache (`NEXT_HOPS`) honest. A netlink socket subscribed to the
//! link, neighbour and route changes of the daemon's network namespace reports each change, and
//! the writer marks every cached hop stale (one `SETTINGS` write); each backend's next packet
//! then asks the FIB again. Messages are not parsed: which hop changed does not matter, and one
//! FIB lookup per backend after a change is cheap. A lost message (the socket's buffer overran)
//! counts as a change; a socket that fails turns the cache off rather than leave it stale.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc;
use tracing::warn;

/// What the watcher saw.
#[derive(Debug)]
pub enum HopEvent {
    /// A link, neighbour or route changed, or a change may have been lost.
    Changed,
    /// The socket failed: changes can no longer be seen.
    Blind(String),
}

/// `RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE`.
const GROUPS: u32 =
    (libc::RTMGRP_LINK | libc::RTMGRP_NEIGH | libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE)
        as u32;

/// Subscribes in the calling thread's network namespace and reports on a thread of its own.
pub fn watch() -> std::io::Result<mpsc::UnboundedReceiver<HopEvent>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, GROUPS))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("next-hop-watch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let event = match socket.recv(&mut &mut buf[..], 0) {
                    Ok(_) => HopEvent::Changed,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => HopEvent::Changed,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn!(error = %e, "watching routes and neighbours failed: next hops are no longer cached");
                        let _ = tx.send(HopEvent::Blind(e.to_string()));
                        return;
                    }
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}
