//! End to end, NAT mode: the real `understudy` binary in a balancer namespace, three TCP echo
//! backends in their own namespaces, and a client making 1000 connections to the VIP over real
//! veth links, for IPv4 and for IPv6.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::atomic::Ordering,
};

use understudy_testbed::{
    CLIENT_V4, CLIENT_V6, Daemon, EchoServer, Sniffer, Topology, echo_roundtrip, require_root,
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

/// A payload unique to connection `i`, three segments long.
fn payload(i: usize) -> Vec<u8> {
    (0..3000).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
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

    let failures: Vec<String> = topo.client.enter(|| {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..CLIENT_THREADS)
                .map(|t| {
                    s.spawn(move || {
                        let mut failures = Vec::new();
                        for i in (t..CONNECTIONS).step_by(CLIENT_THREADS) {
                            let sent = payload(i);
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
    });
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
