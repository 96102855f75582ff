//! A TCP echo server that counts its connections and remembers its peers.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use crate::Netns;

/// Echoes every byte back on every connection until dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub peers: Arc<Mutex<Vec<IpAddr>>>,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr) -> EchoServer {
        let listener = ns
            .enter(|| TcpListener::bind(addr))
            .expect("bind echo server");
        listener.set_nonblocking(true).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, p, s) = (connections.clone(), peers.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        p.lock().unwrap().push(peer.ip());
                        thread::spawn(move || echo(stream));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        EchoServer {
            addr,
            connections,
            peers,
            stop,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo(mut stream: TcpStream) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Connects to `to`, sends `payload`, half-closes, and returns what came back and the peer the
/// socket saw.
pub fn echo_roundtrip(to: SocketAddr, payload: &[u8]) -> std::io::Result<(Vec<u8>, SocketAddr)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = s.peer_addr()?;
    s.write_all(payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::with_capacity(payload.len());
    s.read_to_end(&mut back)?;
    Ok((back, peer))
}
