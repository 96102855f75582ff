//! The XDP program's behaviour as a table, in the manner of Katran's test fixtures: each row is
//! a name, an input packet, the interface it arrives on, the action expected and the exact output
//! packet expected. Where a row goes to a backend, the backend is *predicted*, from the plan's
//! ring and the placement hash as the kernel computes it (`understudy::explain::placement_hash`,
//! over `lb_common::hash`), never read back from the output: a
//! packet sent to the wrong backend fails its row.

mod support;

use std::net::{IpAddr, SocketAddr};

use lb_common::{Counter, PROTO_TCP, PROTO_UDP};
use support::*;
use understudy::{
    config::Config,
    plan::{Plan, plan},
};

/// Where a packet arrives.
#[derive(Clone, Copy, Debug)]
enum From {
    /// The client side (`xc`).
    Client,
    /// The backend side (`xb`).
    Backend,
}

/// What the program must do with a row's packet.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Rewritten to the predicted backend and redirected out of `xb`.
    Forwarded,
    /// Translated to the predicted backend and handed to the stack (VLAN-tagged packets).
    TranslatedToStack,
    /// Passed byte for byte.
    Untouched,
    /// A backend's reply translated back to the row's VIP and redirected out of `xc`.
    Returned,
}

struct Row {
    name: &'static str,
    packet: Pkt,
    from: From,
    want: Want,
    /// The global counters this packet must raise, each by one; every other must stay put.
    counted: &'static [Counter],
}

fn syn(src: &str, dst: &str, sport: u16, dport: u16) -> Pkt {
    Pkt::to_vip(src, dst, sport, dport, L4::Tcp { syn: true })
}

fn rows() -> Vec<Row> {
    let row = |name, packet, from, want, counted| Row {
        name,
        packet,
        from,
        want,
        counted,
    };
    let acked = |p: Pkt| Pkt {
        l4: L4::Tcp { syn: false },
        ..p
    };
    vec![
        row(
            "v4 syn",
            syn(CLIENT4, VIP4, 43000, 80),
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect],
        ),
        row(
            "v4 syn, other port",
            syn(CLIENT4, VIP4, 43001, 80),
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect],
        ),
        row(
            "v4 syn, third port",
            syn(CLIENT4, VIP4, 43002, 80),
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect],
        ),
        row(
            "v4 ack with no flow (hashed like its syn)",
            acked(syn(CLIENT4, VIP4, 43003, 80)),
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect, Counter::FlowMissEstablished],
        ),
        row(
            "v4 syn with IP options",
            Pkt {
                ip_options: true,
                ..syn(CLIENT4, VIP4, 43004, 80)
            },
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect],
        ),
        row(
            "v4 udp",
            Pkt::to_vip(CLIENT4, VIP4, 43005, 53, L4::Udp),
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect],
        ),
        row(
            "v6 syn",
            syn(CLIENT6, VIP6, 43006, 80),
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect],
        ),
        row(
            "v6 syn, other port",
            syn(CLIENT6, VIP6, 43007, 80),
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect],
        ),
        row(
            "v6 udp",
            Pkt::to_vip(CLIENT6, VIP6, 43008, 53, L4::Udp),
            From::Client,
            Want::Forwarded,
            &[Counter::Redirect],
        ),
        row(
            "v4 syn on a VLAN",
            Pkt {
                vlan: Some(100),
                ..syn(CLIENT4, VIP4, 43009, 80)
            },
            From::Client,
            Want::TranslatedToStack,
            &[Counter::PassVlan],
        ),
        row(
            "v4 syn to a port with no service",
            syn(CLIENT4, VIP4, 43010, 81),
            From::Client,
            Want::Untouched,
            &[Counter::PassNotVip],
        ),
        row(
            "v4 syn to another address",
            syn(CLIENT4, "10.0.0.99", 43011, 80),
            From::Client,
            Want::Untouched,
            &[Counter::PassNotVip],
        ),
        row(
            "v4 udp to a TCP service's port",
            Pkt::to_vip(CLIENT4, VIP4, 43012, 80, L4::Udp),
            From::Client,
            Want::Untouched,
            &[Counter::PassNotVip],
        ),
        row(
            "v4 syn with TTL 1",
            Pkt {
                ttl: 1,
                ..syn(CLIENT4, VIP4, 43013, 80)
            },
            From::Client,
            Want::Untouched,
            &[Counter::PassTtl],
        ),
        row(
            "v6 syn with hop limit 1",
            Pkt {
                ttl: 1,
                ..syn(CLIENT6, VIP6, 43014, 80)
            },
            From::Client,
            Want::Untouched,
            &[Counter::PassTtl],
        ),
        // A backend's reply with no flow in FLOWS (evicted, or left unwritten by the flood
        // guard): REVERSE still knows the backend's VIP.
        row(
            "a backend's reply for no tracked flow",
            syn(CLIENT4, VIP4, 43015, 80).reply_from("10.0.11.2".parse().unwrap()),
            From::Backend,
            Want::Returned,
            &[Counter::ReplyTranslated, Counter::Redirect],
        ),
        row(
            "a backend's packet from a port no service uses",
            Pkt {
                sport: 9999,
                ..syn(CLIENT4, VIP4, 43016, 80).reply_from("10.0.11.2".parse().unwrap())
            },
            From::Backend,
            Want::Untouched,
            &[Counter::PassNotVip],
        ),
    ]
}

/// The backend the kernel must pick for a new flow, computed as it does: the flow hash (or the
/// source hash) of the packet's key, into the service's planned ring.
fn predicted(plan: &Plan, config: &Config, p: &Pkt) -> Option<SocketAddr> {
    let proto = match p.l4 {
        L4::Udp => PROTO_UDP,
        _ => PROTO_TCP,
    };
    let si = config.services.iter().position(|s| {
        s.vip == SocketAddr::new(p.dst, p.dport)
            && (proto == PROTO_UDP) == (s.protocol == understudy::config::Protocol::Udp)
    })?;
    let svc = &plan.services[si];
    svc.serving.kernel()?;
    let ring = svc.initial_ring();
    // The placement as user space models it (`understudy explain` uses the same): the kernel's
    // output must agree.
    let hash = understudy::explain::placement_hash(svc, SocketAddr::new(p.src, p.sport));
    let id = ring[(hash % ring.len() as u32) as usize];
    svc.members.iter().find(|m| m.id == id).map(|m| m.address)
}

#[test]
fn every_row_of_the_table() {
    let mut bed = bed(CONFIG);
    let config = Config::parse("test.toml".as_ref(), CONFIG).unwrap();
    let plan = plan(&config);
    let mut placed = std::collections::BTreeSet::new();
    for row in rows() {
        let ifindex = match row.from {
            From::Client => bed.xc,
            From::Backend => bed.xb,
        };
        let input = row.packet.bytes();
        let before = bed.dp().counters().unwrap();
        let (action, out) = bed.run(&input, ifindex);
        // Whether a row asks the FIB depends on whether an earlier row cached its backend's next
        // hop (`xdp_edge` tests the cache).
        for &c in Counter::ALL
            .iter()
            .filter(|&&c| c != Counter::NextHopLookup)
        {
            let rose = bed.counter(c) - before.get(c);
            let want = u64::from(row.counted.contains(&c));
            assert_eq!(rose, want, "{}: counter {}", row.name, c.name());
        }
        let (want_action, want_bytes) = match row.want {
            Want::Untouched => (XDP_PASS, input.clone()),
            Want::Returned => (XDP_REDIRECT, row.packet.returned_from(VIP4, 80).bytes()),
            Want::Forwarded | Want::TranslatedToStack => {
                let backend = predicted(&plan, &config, &row.packet)
                    .unwrap_or_else(|| panic!("{}: no service for the row's packet", row.name));
                placed.insert(backend);
                let ip: IpAddr = backend.ip();
                match row.want {
                    Want::Forwarded => (
                        XDP_REDIRECT,
                        row.packet.forwarded_to(ip, backend.port()).bytes(),
                    ),
                    _ => (
                        XDP_PASS,
                        row.packet.translated_to(ip, backend.port()).bytes(),
                    ),
                }
            }
        };
        assert_eq!(action, want_action, "{}: action", row.name);
        assert_bytes(row.name, &out, &want_bytes);
    }
    // The prediction is only a test if it has more than one answer to give.
    assert!(
        placed.len() >= 3,
        "the rows reached only {placed:?}: choose ports that spread"
    );
}
