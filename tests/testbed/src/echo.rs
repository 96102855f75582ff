//! A TCP echo server that counts its connections and remembers its peers. It can greet each
//! connection with a line (the backend's name, so clients know where they landed) and be stopped
//! like a killed process: the port closes and every connection is reset.

use std::{
    collections::HashMap,
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
    /// Clones of the open connections, to reset them on `kill`; each handler removes its own.
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr) -> EchoServer {
        EchoServer::start_greeting(ns, addr, None)
    }

    /// Listens on `addr` inside `ns`, and sends `greeting` first on every connection.
    pub fn start_greeting(ns: &Netns, addr: SocketAddr, greeting: Option<String>) -> EchoServer {
        let listener = ns
            .enter(|| TcpListener::bind(addr))
            .expect("bind echo server");
        listener.set_nonblocking(true).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(HashMap::new()));
        let (c, p, s, o) = (
            connections.clone(),
            peers.clone(),
            stop.clone(),
            open.clone(),
        );
        let accept = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        p.lock().unwrap().push(peer.ip());
                        let id = c.load(Ordering::Relaxed) as u64;
                        if let Ok(clone) = stream.try_clone() {
                            o.lock().unwrap().insert(id, clone);
                        }
                        let greeting = greeting.clone();
                        let o = o.clone();
                        thread::spawn(move || {
                            if let Some(g) = greeting {
                                let _ = stream.write_all(g.as_bytes());
                            }
                            echo(stream);
                            o.lock().unwrap().remove(&id);
                        });
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
            open,
            accept: Some(accept),
        }
    }

    /// Stops like a killed process: the port is closed when this returns, and every open
    /// connection is reset.
    pub fn kill(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for (_, s) in self.open.lock().unwrap().drain() {
            // Linger 0: closing sends a RST, as the kernel does for a dead process's sockets.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const _ as *const libc::c_void,
                    size_of::<libc::linger>() as u32,
                );
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.halt();
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

/// A payload unique to connection `i`, three segments long.
pub fn echo_payload(i: usize) -> Vec<u8> {
    (0..3000).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
}

/// `n` echo round trips to `vip` from inside `client`, spread over `threads` threads, each with
/// [`echo_payload`]; the failures, described (a payload not back intact, a peer other than the
/// VIP, an error).
pub fn echo_connections(client: &Netns, vip: SocketAddr, n: usize, threads: usize) -> Vec<String> {
    client.enter(|| {
        thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        let mut failures = Vec::new();
                        for i in (t..n).step_by(threads) {
                            let sent = echo_payload(i);
                            match echo_roundtrip(vip, &sent) {
                                Ok((back, peer)) if back == sent && peer == vip => {}
                                Ok((back, peer)) => failures.push(format!(
                                    "connection {i}: {} of {} bytes back intact, peer {peer}",
                                    back.iter().zip(&sent).take_while(|(a, b)| a == b).count(),
                                    sent.len()
                                )),
                                Err(e) => failures.push(format!("connection {i}: {e}")),
                            }
                        }
                        failures
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        })
    })
}
