//! The forwarding modes in the kernel (`test_run` on crafted packets, exact output bytes): DSR's
//! MAC-only rewrite and its on-link rule; IPIP, IP6IP6, 6in4 and GUE's outer headers, their
//! checksums and GUE's source-port entropy; the too-big answers; and the backend-side
//! decapsulator on valid, foreign, truncated and unrelated packets. The expected outer headers
//! are built by etherparse, independently of the program's header code.

mod support;

use std::net::IpAddr;

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::{IpNumber, Ipv4Header, Ipv6Header};
use lb_common::{Counter, forwarding::DecapCounter, hash::flow_hash};
use support::*;
use understudy::{config::Config, decap::Decap};
use understudy_testbed::FibNamespace;

const BACKEND4: &str = "10.0.11.2";
const BACKEND6: &str = "fd00:11::2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service(mode: &str, vip: &str, backend: &str, extra: &str) -> String {
    format!(
        r#"
dataplane = {{ interfaces = ["xc", "xb"] }}

[[service]]
name = "svc"
vip = "{vip}"
mode = "{mode}"
{extra}
backend = [{{ address = "{backend}" }}]
"#
    )
}

#[test]
fn dsr_rewrites_only_the_destination_mac() {
    for (vip, backend, client, vip_ip, backend_ip) in [
        ("10.0.0.10:80", "10.0.11.2:80", CLIENT4, VIP4, BACKEND4),
        ("[fd00::10]:80", "[fd00:11::2]:80", CLIENT6, VIP6, BACKEND6),
    ] {
        let mut bed = bed(&service("dsr", vip, backend, ""));
        for l4 in [L4::Tcp { syn: true }, L4::Tcp { syn: false }] {
            let pkt = Pkt::to_vip(client, vip_ip, 40000, 80, l4);
            let (action, out) = bed.run(&pkt.bytes(), bed.xc);
            assert_eq!(action, XDP_REDIRECT, "{vip} {l4:?}");
            let want = Pkt {
                eth_src: XB_MAC,
                eth_dst: backend_mac(ip(backend_ip)),
                ttl: pkt.ttl - 1,
                ..pkt.clone()
            };
            assert_bytes(&format!("dsr {vip} {l4:?}"), &out, &want.bytes());
        }
        // The client's ACK after its SYN is the only sign the backend answered: once per flow.
        assert_eq!(bed.counter(Counter::HandshakeSeen), 1, "{vip}");
        let ack = Pkt::to_vip(client, vip_ip, 40000, 80, L4::Tcp { syn: false });
        bed.run(&ack.bytes(), bed.xc);
        assert_eq!(bed.counter(Counter::HandshakeSeen), 1, "{vip}");
        // No reply translation in DSR: a packet from the backend's address and port passes
        // untouched (backends answer from the VIP, straight to the client).
        let from_backend =
            Pkt::to_vip(client, vip_ip, 40000, 80, L4::SynAck).reply_from(ip(backend_ip));
        let from_backend = Pkt {
            sport: 80,
            ..from_backend
        };
        let (action, out) = bed.run(&from_backend.bytes(), bed.xb);
        assert_eq!(action, XDP_PASS, "{vip}");
        assert_bytes("dsr backend packet", &out, &from_backend.bytes());
    }
    // UDP too.
    let mut bed = bed(&service(
        "dsr",
        "10.0.0.10:53",
        "10.0.11.2:53",
        "protocol = \"udp\"",
    ));
    let pkt = Pkt::to_vip(CLIENT4, VIP4, 40000, 53, L4::Udp);
    let (action, out) = bed.run(&pkt.bytes(), bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    let want = Pkt {
        eth_src: XB_MAC,
        eth_dst: backend_mac(ip(BACKEND4)),
        ttl: 63,
        ..pkt
    };
    assert_bytes("dsr udp", &out, &want.bytes());
}

#[test]
fn dsr_to_a_backend_behind_a_gateway_is_dropped_and_counted() {
    let mut bed = bed(&service("dsr", "10.0.0.10:80", "10.0.12.2:80", ""));
    bed.ns
        .ip(&["route", "add", "10.0.12.0/24", "via", BACKEND4, "dev", "xb"]);
    let pkt = Pkt::to_vip(CLIENT4, VIP4, 40000, 80, L4::Tcp { syn: true });
    let (action, _) = bed.run(&pkt.bytes(), bed.xc);
    assert_eq!(action, XDP_DROP);
    assert_eq!(bed.counter(Counter::DropDsrNotOnLink), 1);
}

#[test]
fn a_dsr_backend_behind_a_gateway_is_refused_where_it_is_written() {
    let bed = bed(&service("dsr", "10.0.0.10:80", "10.0.11.2:80", ""));
    bed.ns
        .ip(&["route", "add", "10.0.12.0/24", "via", BACKEND4, "dev", "xb"]);
    let text = service("dsr", "10.0.0.10:80", "10.0.12.2:80", "");
    let config = Config::parse("dsr.toml".as_ref(), &text).unwrap();
    let e = bed
        .ns
        .enter(|| understudy::dataplane::routes::check_on_link(&config))
        .expect_err("a backend behind a gateway");
    assert_eq!(
        (e.line, e.field.as_str()),
        (9, "service[0].backend[0].address")
    );
    assert!(e.problem.contains("through the gateway 10.0.11.2"), "{e}");
    assert!(e.to_string().starts_with("dsr.toml:9:"), "{e}");
    // On-link backends, and the service's own config, pass.
    let good = Config::parse(
        "dsr.toml".as_ref(),
        &service("dsr", "10.0.0.10:80", "10.0.11.2:80", ""),
    )
    .unwrap();
    bed.ns
        .enter(|| understudy::dataplane::routes::check_on_link(&good))
        .unwrap();
    let v6 = Config::parse(
        "dsr.toml".as_ref(),
        &service("dsr", "[fd00::10]:80", "[fd00:11::2]:80", ""),
    )
    .unwrap();
    bed.ns
        .enter(|| understudy::dataplane::routes::check_on_link(&v6))
        .unwrap();
}

/// The frame the program should send for `pkt` wrapped toward `backend`: Ethernet to the
/// backend's MAC, the outer IP header (and UDP for GUE), then the inner IP packet unchanged.
fn wrapped(pkt: &Pkt, backend: &str, source: &str, gue: Option<u16>) -> Vec<u8> {
    wrap(
        &pkt.bytes()[14..],
        flow_hash(&flow_key(pkt)),
        backend,
        source,
        gue,
    )
}

/// [`wrapped`] for an inner IP packet `inner` whose flow hash is `hash`.
fn wrap(inner: &[u8], hash: u32, backend: &str, source: &str, gue: Option<u16>) -> Vec<u8> {
    let inner_proto = if inner[0] >> 4 == 4 {
        IpNumber::IPV4
    } else {
        IpNumber::IPV6
    };
    let mut l4 = Vec::new();
    if let Some(port) = gue {
        let sport = 49152 + (hash % 16384) as u16;
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&port.to_be_bytes());
        l4.extend_from_slice(&((inner.len() + 8) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    let proto = if gue.is_some() {
        IpNumber::UDP
    } else {
        inner_proto
    };
    let mut frame = Vec::new();
    frame.extend_from_slice(&backend_mac(ip(backend)));
    frame.extend_from_slice(&XB_MAC);
    match (ip(source), ip(backend)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut h = Ipv4Header::new(
                (l4.len() + inner.len()) as u16,
                64,
                proto,
                s.octets(),
                d.octets(),
            )
            .unwrap();
            h.dont_fragment = true;
            h.identification = 0;
            h.header_checksum = h.calc_header_checksum();
            frame.extend_from_slice(&h.to_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            let h = Ipv6Header {
                traffic_class: 0,
                flow_label: (hash & 0xf_ffff).try_into().unwrap(),
                payload_length: (l4.len() + inner.len()) as u16,
                next_header: proto,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            frame.extend_from_slice(&h.to_bytes());
        }
        _ => panic!("mixed outer families"),
    }
    frame.extend_from_slice(&l4);
    frame.extend_from_slice(inner);
    frame
}

#[test]
fn tunnels_wrap_the_packet_in_exact_outer_headers() {
    let cases = [
        // (case, vip, backend, client, vip ip, backend ip, source, encap)
        (
            "ipip",
            "10.0.0.10:80",
            "10.0.11.2:80",
            CLIENT4,
            VIP4,
            BACKEND4,
            "10.0.11.1",
            None,
        ),
        (
            "ip6ip6",
            "[fd00::10]:80",
            "[fd00:11::2]:80",
            CLIENT6,
            VIP6,
            BACKEND6,
            "fd00:11::1",
            None,
        ),
        (
            "6in4",
            "[fd00::10]:80",
            "10.0.11.2:80",
            CLIENT6,
            VIP6,
            BACKEND4,
            "10.0.11.1",
            None,
        ),
        (
            "4in6",
            "10.0.0.10:80",
            "[fd00:11::2]:80",
            CLIENT4,
            VIP4,
            BACKEND6,
            "fd00:11::1",
            None,
        ),
        (
            "gue4",
            "10.0.0.10:80",
            "10.0.11.2:80",
            CLIENT4,
            VIP4,
            BACKEND4,
            "10.0.11.1",
            Some(6080),
        ),
        (
            "gue6",
            "[fd00::10]:80",
            "[fd00:11::2]:80",
            CLIENT6,
            VIP6,
            BACKEND6,
            "fd00:11::1",
            Some(7000),
        ),
    ];
    for (case, vip, backend, client, vip_ip, backend_ip, source, gue) in cases {
        let field = if source.contains(':') {
            "source_v6"
        } else {
            "source_v4"
        };
        let tunnel = match gue {
            Some(port) => {
                format!("tunnel = {{ encap = \"gue\", port = {port}, {field} = \"{source}\" }}")
            }
            None => format!("tunnel = {{ {field} = \"{source}\" }}"),
        };
        let mut bed = bed(&service("tunnel", vip, backend, &tunnel));
        let mut ports = std::collections::HashSet::new();
        for sport in [40000u16, 40001, 40002, 40003] {
            let pkt = Pkt::to_vip(client, vip_ip, sport, 80, L4::Tcp { syn: true });
            let (action, out) = bed.run(&pkt.bytes(), bed.xc);
            assert_eq!(action, XDP_REDIRECT, "{case}");
            assert_bytes(case, &out, &wrapped(&pkt, backend_ip, source, gue));
            if gue.is_some() {
                ports.insert([
                    out[34 + if source.contains(':') { 20 } else { 0 }],
                    out[35 + if source.contains(':') { 20 } else { 0 }],
                ]);
            }
        }
        if gue.is_some() {
            assert!(
                ports.len() > 1,
                "{case}: GUE source ports carry the flow hash: {ports:?}"
            );
        }
        assert_eq!(bed.counter(Counter::Encapsulated), 4, "{case}");
    }
}

/// Later fragments carry no ports, so they follow their first fragment's backend through
/// `FRAGS`, forwarded the way the service forwards: DSR's MAC rewrite, or the tunnel.
#[test]
fn later_fragments_follow_their_first_in_dsr_and_tunnels() {
    let datagram = Pkt {
        payload: (0..2800).map(|i| (i % 251) as u8).collect(),
        ..Pkt::to_vip(CLIENT4, VIP4, 40060, 53, L4::Udp)
    };
    let dsr_config = service("dsr", "10.0.0.10:53", "10.0.11.2:53", "protocol = \"udp\"");
    let mut bed = bed(&dsr_config);
    let sent = fragments(&datagram.bytes(), false, 1480, 7);
    let moved = Pkt {
        eth_src: XB_MAC,
        eth_dst: backend_mac(ip(BACKEND4)),
        ttl: 63,
        ..datagram.clone()
    };
    let want = fragments(&moved.bytes(), false, 1480, 7);
    for (i, (frag, want)) in sent.iter().zip(&want).enumerate() {
        let (action, out) = bed.run(frag, bed.xc);
        assert_eq!(action, XDP_REDIRECT, "dsr fragment {i}");
        assert_bytes(&format!("dsr fragment {i}"), &out, want);
    }
    assert_eq!(bed.counter(Counter::FragmentTranslated), 1);
    drop(bed);

    let mut bed = support::bed(&service(
        "tunnel",
        "10.0.0.10:53",
        "10.0.11.2:53",
        "protocol = \"udp\"\ntunnel = { source_v4 = \"10.0.11.1\" }",
    ));
    // Each piece must fit the link once wrapped (20 bytes more).
    let datagram = Pkt {
        payload: (0..1800).map(|i| (i % 251) as u8).collect(),
        ..datagram
    };
    let sent = fragments(&datagram.bytes(), false, 1000, 8);
    for (i, frag) in sent.iter().enumerate() {
        let (action, out) = bed.run(frag, bed.xc);
        assert_eq!(action, XDP_REDIRECT, "ipip fragment {i}");
        // IPIP over IPv4 uses no hash: any will do.
        assert_bytes(
            &format!("ipip fragment {i}"),
            &out,
            &wrap(&frag[14..], 0, BACKEND4, "10.0.11.1", None),
        );
    }
    assert_eq!(bed.counter(Counter::FragmentTranslated), 1);
}

#[test]
fn a_tunnel_source_defaults_to_the_route_source() {
    // Installed outside the FIB namespace, the route toward 127.0.0.2 is the loopback's.
    let mut bed = bed(&service("tunnel", "10.0.0.10:80", "127.0.0.2:80", ""));
    let entry = bed.dp().edge.tunnel(0).unwrap();
    assert_eq!(
        lb_common::words_addr(entry.src, entry.family),
        ip("127.0.0.1")
    );
}

/// One's-complement checksum of `bytes`, as RFC 1071 defines it.
fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP packet of `len` bytes on the wire; for IPv4, DF set or clear as `df` says (etherparse
/// sets it by default).
fn big(client: &str, vip: &str, len: usize, df: bool) -> Vec<u8> {
    let mut pkt = Pkt::to_vip(client, vip, 40000, 80, L4::Tcp { syn: false });
    pkt.payload = vec![0x5a; 0];
    let head = pkt.bytes().len();
    pkt.payload = vec![0x5a; len - head];
    let mut bytes = pkt.bytes();
    if pkt.src.is_ipv4() {
        if df {
            bytes[20] |= 0x40;
        } else {
            bytes[20] &= !0x40;
        }
        bytes[24] = 0;
        bytes[25] = 0;
        let c = inet_checksum(&bytes[14..34]);
        bytes[24..26].copy_from_slice(&c.to_be_bytes());
    }
    bytes
}

#[test]
fn too_big_after_encapsulation_is_answered_with_the_mtu_less_the_overhead() {
    // IPv4 with DF: frag-needed, MTU 1000 - 20.
    let mut bed = bed(&service(
        "tunnel",
        "10.0.0.10:80",
        "10.0.11.2:80",
        "tunnel = { source_v4 = \"10.0.11.1\" }",
    ));
    bed.ns.ip(&["link", "set", "xb", "mtu", "1000"]);
    let pkt = big(CLIENT4, VIP4, 14 + 990, true);
    let (action, out) = bed.run(&pkt, bed.xc);
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), 14 + 20 + 8 + 128);
    assert_eq!(&out[..6], &CLIENT_MAC);
    assert_eq!(&out[6..12], &XC_MAC);
    let ip4 = &out[14..34];
    assert_eq!(inet_checksum(ip4), 0, "IPv4 header checksum");
    assert_eq!(ip4[9], 1, "ICMP");
    assert_eq!(&ip4[12..16], &[10, 0, 0, 10], "from the VIP");
    assert_eq!(&ip4[16..20], &[10, 0, 1, 2], "to the client");
    let icmp = &out[34..];
    assert_eq!(&icmp[..2], &[3, 4], "frag-needed");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 980);
    assert_eq!(inet_checksum(icmp), 0, "ICMP checksum");
    assert_eq!(&icmp[8..], &pkt[14..14 + 128], "the quote");
    assert_eq!(bed.counter(Counter::TooBigAnswered), 1);

    // Without DF it cannot be fragmented here: dropped and counted.
    let (action, _) = bed.run(&big(CLIENT4, VIP4, 14 + 990, false), bed.xc);
    assert_eq!(action, XDP_DROP);
    assert_eq!(bed.counter(Counter::DropTooBig), 1);
    // One that fits goes through.
    let (action, _) = bed.run(&big(CLIENT4, VIP4, 14 + 980, true), bed.xc);
    assert_eq!(action, XDP_REDIRECT);

    drop(bed);

    // IPv6 over GUE: Packet Too Big, MTU 1400 - 48.
    let mut bed = support::bed(&service(
        "tunnel",
        "[fd00::10]:80",
        "[fd00:11::2]:80",
        "tunnel = { encap = \"gue\", source_v6 = \"fd00:11::1\" }",
    ));
    bed.ns.ip(&["link", "set", "xb", "mtu", "1400"]);
    let pkt = big(CLIENT6, VIP6, 14 + 1380, false);
    let (action, out) = bed.run(&pkt, bed.xc);
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), 14 + 40 + 8 + 128);
    let ip6 = &out[14..54];
    assert_eq!(ip6[6], 58, "ICMPv6");
    assert_eq!(u16::from_be_bytes([ip6[4], ip6[5]]), 136);
    assert_eq!(
        &ip6[8..24],
        &VIP6.parse::<std::net::Ipv6Addr>().unwrap().octets()
    );
    let icmp = &out[54..];
    assert_eq!(&icmp[..2], &[2, 0], "Packet Too Big");
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        1352
    );
    // The checksum covers the pseudo-header: source, destination, length, next header.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip6[8..40]);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(icmp);
    assert_eq!(inet_checksum(&pseudo), 0, "ICMPv6 checksum");
    assert_eq!(&icmp[8..], &pkt[14..14 + 128]);
}

/// The decapsulator loaded and configured for this host (10.0.11.2, fd00:11::2) and the VIPs.
fn decap() -> Decap {
    require_root_decap();
    let mut d = Decap::load(None).expect("load the decapsulator");
    d.configure(&[ip(BACKEND4), ip(BACKEND6)], &[ip(VIP4), ip(VIP6)], 6080)
        .unwrap();
    d
}

fn require_root_decap() {
    understudy_testbed::require_root("the decapsulator's test_run tests");
}

fn run_decap(d: &mut Decap, pkt: &[u8]) -> (u32, Vec<u8>) {
    let ctx = FibNamespace::xdp_ctx(pkt.len(), 1);
    let mut out = vec![0u8; pkt.len() + 256];
    let result = d
        .program()
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("test_run");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn decap_count(d: &Decap, c: DecapCounter) -> u64 {
    d.counters()
        .unwrap()
        .iter()
        .find(|(k, _)| *k == c)
        .unwrap()
        .1
}

/// What arrives at the backend: the balancer's frame, as `wrapped` builds it.
fn arriving(pkt: &Pkt, backend: &str, source: &str, gue: Option<u16>) -> Vec<u8> {
    wrapped(pkt, backend, source, gue)
}

#[test]
fn the_decapsulator_strips_tunnels_to_this_host_for_its_vips_only() {
    let mut d = decap();
    for (case, client, vip, backend, source, gue, counter) in [
        (
            "ipip",
            CLIENT4,
            VIP4,
            BACKEND4,
            "10.0.11.1",
            None,
            DecapCounter::DecapIpip,
        ),
        (
            "ip6ip6",
            CLIENT6,
            VIP6,
            BACKEND6,
            "fd00:11::1",
            None,
            DecapCounter::DecapIpip,
        ),
        (
            "6in4",
            CLIENT6,
            VIP6,
            BACKEND4,
            "10.0.11.1",
            None,
            DecapCounter::DecapIpip,
        ),
        (
            "gue4",
            CLIENT4,
            VIP4,
            BACKEND4,
            "10.0.11.1",
            Some(6080),
            DecapCounter::DecapGue,
        ),
        (
            "gue6",
            CLIENT6,
            VIP6,
            BACKEND6,
            "fd00:11::1",
            Some(6080),
            DecapCounter::DecapGue,
        ),
    ] {
        let inner = Pkt::to_vip(client, vip, 40000, 80, L4::Tcp { syn: true });
        let before = decap_count(&d, counter);
        let (action, out) = run_decap(&mut d, &arriving(&inner, backend, source, gue));
        assert_eq!(action, XDP_PASS, "{case}");
        // The inner packet, behind an Ethernet header with the frame's own MACs.
        let mut want = inner.bytes();
        want[..6].copy_from_slice(&backend_mac(ip(backend)));
        want[6..12].copy_from_slice(&XB_MAC);
        assert_bytes(case, &out, &want);
        assert_eq!(decap_count(&d, counter), before + 1, "{case}");
    }

    // An inner destination that is no VIP of this backend: dropped, counted.
    let foreign = Pkt::to_vip(CLIENT4, "10.0.0.99", 40000, 80, L4::Tcp { syn: true });
    let (action, _) = run_decap(&mut d, &arriving(&foreign, BACKEND4, "10.0.11.1", None));
    assert_eq!(action, XDP_DROP);
    assert_eq!(decap_count(&d, DecapCounter::DropForeignVip), 1);

    // Truncated: the outer header promises an inner packet that is cut short.
    let inner = Pkt::to_vip(CLIENT4, VIP4, 40000, 80, L4::Tcp { syn: true });
    let frame = arriving(&inner, BACKEND4, "10.0.11.1", None);
    let (action, _) = run_decap(&mut d, &frame[..14 + 20 + 10]);
    assert_eq!(action, XDP_DROP);
    assert_eq!(decap_count(&d, DecapCounter::DropTruncated), 1);

    // Not to this host, another UDP port, or plain traffic: untouched.
    for (case, frame) in [
        (
            "other host",
            arriving(&inner, "10.0.11.3", "10.0.11.1", None),
        ),
        (
            "other port",
            arriving(&inner, BACKEND4, "10.0.11.1", Some(7000)),
        ),
        ("plain", inner.bytes()),
    ] {
        let (action, out) = run_decap(&mut d, &frame);
        assert_eq!(action, XDP_PASS, "{case}");
        assert_bytes(case, &out, &frame);
    }
    assert_eq!(decap_count(&d, DecapCounter::PassOther), 3);
}

/// The `__sk_buff` a `test_run` of the probe program starts from: the socket's mark, and the
/// probe interface's place taken by `ifindex`.
fn probe_ctx(mark: u32, ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Runs `understudy_probe` once on `frame` carrying `mark`: its action and the frame it left.
fn run_probe(bed: &mut Bed, frame: &[u8], mark: u32) -> (u32, Vec<u8>) {
    use aya::programs::SchedClassifier;
    let ctx = probe_ctx(mark, bed.xc);
    let Bed { ns, writer, .. } = bed;
    let prog: &mut SchedClassifier = writer
        .dataplane_mut()
        .ebpf_mut()
        .program_mut(understudy::dataplane::probe_path::PROBE_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    if prog.fd().is_err() {
        prog.load().expect("load the probe program");
    }
    let mut out = vec![0u8; frame.len() + 256];
    let result = ns
        .enter(|| {
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
        })
        .expect("test_run");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The path-following health checks' program: a marked probe to the VIP leaves unchanged for
/// DSR (the kernel's neighbour code writes the backend's MAC), or wrapped in exactly the outer
/// header a client's packet gets; an unmarked packet, or a mark naming no backend, is dropped
/// and counted.
#[test]
fn probes_follow_the_clients_path_in_exact_bytes() {
    use lb_common::{FORWARD_DSR, FORWARD_GUE, FORWARD_IPIP, probe::mark};
    let cases = [
        // (case, mode, vip, backend, source, vip ip, backend ip, gue port)
        (
            "dsr4",
            FORWARD_DSR,
            "10.0.0.10:80",
            "10.0.11.2:80",
            "10.0.11.1",
            VIP4,
            BACKEND4,
            None,
        ),
        (
            "dsr6",
            FORWARD_DSR,
            "[fd00::10]:80",
            "[fd00:11::2]:80",
            "fd00:11::1",
            VIP6,
            BACKEND6,
            None,
        ),
        (
            "ipip",
            FORWARD_IPIP,
            "10.0.0.10:80",
            "10.0.11.2:80",
            "10.0.11.1",
            VIP4,
            BACKEND4,
            None,
        ),
        (
            "ip6ip6",
            FORWARD_IPIP,
            "[fd00::10]:80",
            "[fd00:11::2]:80",
            "fd00:11::1",
            VIP6,
            BACKEND6,
            None,
        ),
        (
            "gue4",
            FORWARD_GUE,
            "10.0.0.10:80",
            "10.0.11.2:80",
            "10.0.11.1",
            VIP4,
            BACKEND4,
            Some(6080),
        ),
        (
            "gue6",
            FORWARD_GUE,
            "[fd00::10]:80",
            "[fd00:11::2]:80",
            "fd00:11::1",
            VIP6,
            BACKEND6,
            Some(6080),
        ),
    ];
    for (case, mode, vip, backend, source, vip_ip, backend_ip, gue) in cases {
        let field = if source.contains(':') {
            "source_v6"
        } else {
            "source_v4"
        };
        let (name, extra) = match (mode, gue) {
            (FORWARD_DSR, _) => ("dsr", String::new()),
            (_, Some(_)) => (
                "tunnel",
                format!("tunnel = {{ encap = \"gue\", {field} = \"{source}\" }}"),
            ),
            _ => (
                "tunnel",
                format!("tunnel = {{ encap = \"ipip\", {field} = \"{source}\" }}"),
            ),
        };
        let text = service(name, vip, backend, &extra);
        let config = Config::parse("test.toml".as_ref(), &text).unwrap();
        let id = understudy::plan::plan(&config).services[0].members[0].id;
        let mut bed = bed(&text);
        // The balancer's own SYN to the VIP, as the probe interface hands it over.
        let probe = Pkt::to_vip(source, vip_ip, 40000, 80, L4::Tcp { syn: true });
        let frame = probe.bytes();

        let (action, out) = run_probe(&mut bed, &frame, 0);
        assert_eq!(action, TC_ACT_SHOT, "{case}: an unmarked packet");
        assert_eq!(out, frame, "{case}: an unmarked packet is left as it was");
        let (action, _) = run_probe(&mut bed, &frame, mark(mode, id + 1));
        assert_eq!(action, TC_ACT_SHOT, "{case}: a mark naming no backend");
        assert_eq!(bed.counter(Counter::DropProbeUnknown), 2, "{case}");

        let (action, out) = run_probe(&mut bed, &frame, mark(mode, id));
        assert_eq!(action, TC_ACT_REDIRECT, "{case}");
        assert_eq!(bed.counter(Counter::ProbeSent), 1, "{case}");
        if mode == FORWARD_DSR {
            assert_bytes(case, &out, &frame);
            continue;
        }
        let want = wrap(
            &frame[14..],
            flow_hash(&flow_key(&probe)),
            backend_ip,
            source,
            gue,
        );
        // The MACs are the neighbour code's to write after the redirect; the rest is exact.
        assert_bytes(case, &out[..12], &frame[..12]);
        assert_bytes(case, &out[12..], &want[12..]);
    }
}
