//! End to end, NAT mode: the real `understudy` binary in a balancer namespace, three TCP echo
//! backends in their own namespaces, and a client making 1000 connections to the VIP over real
//! veth links, for IPv4 and for IPv6.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::atomic::Ordering,
};

use understudy_testbed::{
    CLIENT_V4, CLIENT_V6, Daemon, EchoServer, Sniffer, Topology, echo_connections, require_root,
};

const CONNECTIONS: usize = 1000;
const CLIENT_THREADS: usize = 4;
const BACKEND_PORT: u16 = 8080;

fn config(topo: &Topology, v6: bool) -> PathBuf {
    let mut text = format!(
        "{}xdp_mode = \"native\"\n\n[[service]]\nname = \"echo\"\nvip = \"{}\"\n",
        topo.dataplane_toml(),
        SocketAddr::new(topo.vip(v6), 80)
    );
    for i in 1..=topo.backends.len() {
        text.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}\"\n",
            SocketAddr::new(topo.backend_addr(i, v6), BACKEND_PORT)
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, text).unwrap();
    path
}

fn thousand_connections(v6: bool) {
    require_root("the NAT end-to-end test");
    let topo = Topology::build(3);
    let servers: Vec<EchoServer> = (1..=3)
        .map(|i| {
            EchoServer::start(
                &topo.backends[i - 1],
                SocketAddr::new(topo.backend_addr(i, v6), BACKEND_PORT),
            )
        })
        .collect();
    let config = config(&topo, v6);
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &config);
    let vip = SocketAddr::new(topo.vip(v6), 80);
    let sniffer = Sniffer::start(&topo.client, "eth0");

    let failures = echo_connections(&topo.client, vip, CONNECTIONS, CLIENT_THREADS);
    let (sources, packets) = sniffer.finish();

    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections failed, first: {:?}\ndaemon output:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        daemon.output()
    );
    let counts: Vec<usize> = servers
        .iter()
        .map(|s| s.connections.load(Ordering::Relaxed))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), CONNECTIONS, "{counts:?}");
    for (i, &c) in counts.iter().enumerate() {
        let share = c as f64 / CONNECTIONS as f64;
        assert!(
            (0.20..=0.45).contains(&share),
            "backend {} got {:.1}% of the connections: {counts:?}",
            i + 1,
            share * 100.0
        );
    }
    // NAT keeps the client's address: every backend saw the client itself.
    let client: IpAddr = if v6 {
        CLIENT_V6.into()
    } else {
        CLIENT_V4.into()
    };
    for s in &servers {
        assert!(s.peers.lock().unwrap().iter().all(|p| *p == client));
    }
    // And the client heard from nobody but the VIP.
    assert!(
        packets >= CONNECTIONS as u64 * 3,
        "sniffer saw only {packets} packets"
    );
    assert_eq!(
        sources.into_iter().collect::<Vec<_>>(),
        vec![vip.ip()],
        "the client received packets from other sources than the VIP"
    );
    eprintln!("{} connections, per backend {counts:?}", CONNECTIONS);
    assert!(daemon.stop(), "understudy did not exit cleanly on SIGTERM");
    std::fs::remove_file(config).ok();
}

#[test]
fn ipv4_thousand_connections_spread_and_echo() {
    thousand_connections(false);
}

#[test]
fn ipv6_thousand_connections_spread_and_echo() {
    thousand_connections(true);
}

/// Path-MTU discovery through the balancer: a router between the client and the balancer has a
/// narrower link toward the client (1400 bytes for IPv4, 1280 for IPv6), so a backend's
/// full-size replies make it send frag-needed or Packet Too Big to the VIP. The balancer must
/// translate them to the backend, or the download black-holes. A 10 MB download through the VIP
/// completes over each family.
#[test]
fn path_mtu_discovery_works_through_the_vip() {
    use std::io::{Read as _, Write as _};
    require_root("the path-MTU test");
    const SIZE: usize = 10 << 20;
    let topo = Topology::build(1);
    // The standard client namespace becomes the router; the real client sits behind it.
    let router = &topo.client;
    let far = understudy_testbed::Netns::new("far");
    router.veth_to("r-far", &far, "eth0");
    router.ip(&["addr", "add", "10.0.2.1/24", "dev", "r-far"]);
    router.ip(&["-6", "addr", "add", "fd00:2::1/64", "dev", "r-far", "nodad"]);
    router.ip(&["link", "set", "r-far", "up"]);
    router.sysctl("net.ipv4.ip_forward", "1");
    router.sysctl("net.ipv6.conf.all.forwarding", "1");
    far.ip(&["addr", "add", "10.0.2.2/24", "dev", "eth0"]);
    far.ip(&["-6", "addr", "add", "fd00:2::2/64", "dev", "eth0", "nodad"]);
    far.ip(&["link", "set", "eth0", "up"]);
    far.ip(&["link", "set", "lo", "up"]);
    far.ip(&["route", "add", "default", "via", "10.0.2.1"]);
    far.ip(&["-6", "route", "add", "default", "via", "fd00:2::1"]);
    topo.lb
        .ip(&["route", "add", "10.0.2.0/24", "via", "10.0.1.2"]);
    topo.lb
        .ip(&["-6", "route", "add", "fd00:2::/64", "via", "fd00:1::2"]);

    // The backend sends 10 MB to whoever connects.
    for v6 in [false, true] {
        let addr = SocketAddr::new(topo.backend_addr(1, v6), BACKEND_PORT);
        let listener = topo.backends[0]
            .enter(|| std::net::TcpListener::bind(addr))
            .unwrap();
        std::thread::spawn(move || {
            let data = vec![b'x'; SIZE];
            for mut conn in listener.incoming().flatten().take(1) {
                let _ = conn.write_all(&data);
            }
        });
    }
    let mut text = topo.dataplane_toml();
    for (name, v6) in [("v4", false), ("v6", true)] {
        text.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{}\"\n[[service.backend]]\naddress = \"{}\"\n",
            SocketAddr::new(topo.vip(v6), 80),
            SocketAddr::new(topo.backend_addr(1, v6), BACKEND_PORT)
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &path);

    for (v6, mtu) in [(false, "1400"), (true, "1280")] {
        router.ip(&["link", "set", "r-far", "mtu", mtu]);
        let vip = SocketAddr::new(topo.vip(v6), 80);
        let got = far.enter(|| -> Result<usize, String> {
            let mut s =
                std::net::TcpStream::connect_timeout(&vip, std::time::Duration::from_secs(3))
                    .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
                .unwrap();
            let mut total = 0;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n,
                    Err(e) => return Err(format!("after {total} bytes: {e}")),
                }
            }
        });
        assert_eq!(
            got,
            Ok(SIZE),
            "the download over {} through a {mtu}-byte link completes\n{}",
            if v6 { "IPv6" } else { "IPv4" },
            daemon.output()
        );
    }
    assert!(daemon.stop());
    std::fs::remove_file(path).ok();
}

/// Fragmented datagrams through the VIP, both ways: a UDP service answers a 4,000-byte datagram
/// (three fragments each way on 1500-byte links) over IPv4 and IPv6.
#[test]
fn a_udp_service_answers_a_fragmented_datagram() {
    require_root("the fragments test");
    let topo = Topology::build(1);
    for v6 in [false, true] {
        let addr = SocketAddr::new(topo.backend_addr(1, v6), 5353);
        let socket = topo.backends[0]
            .enter(|| std::net::UdpSocket::bind(addr))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            for _ in 0..4 {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let _ = socket.send_to(&buf[..n], from);
            }
        });
    }
    let mut text = topo.dataplane_toml();
    for (name, v6) in [("dns", false), ("dns6", true)] {
        text.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{}\"\nprotocol = \"udp\"\n\
             [[service.backend]]\naddress = \"{}\"\n",
            SocketAddr::new(topo.vip(v6), 53),
            SocketAddr::new(topo.backend_addr(1, v6), 5353)
        ));
    }
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name()));
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start(&topo.lb, env!("CARGO_BIN_EXE_understudy").as_ref(), &path);
    for v6 in [false, true] {
        let vip = SocketAddr::new(topo.vip(v6), 53);
        let sent: Vec<u8> = (0..4000).map(|i| (i % 253) as u8).collect();
        let got = topo.client.enter(|| -> Result<Vec<u8>, String> {
            let local = if v6 { "[::]:0" } else { "0.0.0.0:0" };
            let s = std::net::UdpSocket::bind(local).map_err(|e| e.to_string())?;
            s.connect(vip).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
                .unwrap();
            s.send(&sent).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 65536];
            let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
            Ok(buf[..n].to_vec())
        });
        assert_eq!(
            got.as_deref().map(<[u8]>::len),
            Ok(sent.len()),
            "over {}: the answer arrives whole\n{}",
            if v6 { "IPv6" } else { "IPv4" },
            daemon.output()
        );
        assert_eq!(got.unwrap(), sent);
    }
    assert!(daemon.stop());
    std::fs::remove_file(path).ok();
}
