//! The XDP program in the kernel, through `BPF_PROG_TEST_RUN` on crafted packets. Each case checks
//! the action and the exact output bytes against a packet built independently by etherparse (so
//! every checksum is a full recomputation). The runs happen inside a namespace with two veth
//! interfaces and permanent neighbour entries, so `bpf_fib_lookup` answers deterministically.

mod support;

use std::net::IpAddr;

use lb_common::Counter;
use support::*;
use understudy::{config::Config, plan::plan};

fn bed() -> Bed {
    support::bed(CONFIG)
}

#[test]
fn syn_to_a_vip_is_rewritten_to_a_backend() {
    let mut bed = bed();
    let syn = Pkt::to_vip(CLIENT4, VIP4, 40000, 80, L4::Tcp { syn: true });
    let (action, out) = bed.run(&syn.bytes(), bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    let (backend, port) = destination(&out);
    assert!(
        ["10.0.11.2", "10.0.11.3", "10.0.11.4"].contains(&backend.to_string().as_str()),
        "{backend}"
    );
    assert_eq!(port, 8080);
    assert_bytes("syn", &out, &syn.forwarded_to(backend, 8080).bytes());
    assert_eq!(bed.counter(Counter::Redirect), 1);
    let svc = bed.dp().service_traffic(0).unwrap();
    assert_eq!((svc.packets, svc.new_flows), (1, 1));
}

#[test]
fn ipv4_options_are_skipped_and_kept() {
    let mut bed = bed();
    let mut syn = Pkt::to_vip(CLIENT4, VIP4, 40001, 80, L4::Tcp { syn: true });
    syn.ip_options = true;
    let (action, out) = bed.run(&syn.bytes(), bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    let (backend, _) = destination(&out);
    assert_bytes("options", &out, &syn.forwarded_to(backend, 8080).bytes());
}

#[test]
fn the_same_flow_keeps_its_backend_and_flows_spread() {
    let mut bed = bed();
    let syn = Pkt::to_vip(CLIENT4, VIP4, 40002, 80, L4::Tcp { syn: true });
    let (_, first) = bed.run(&syn.bytes(), bed.xc);
    let (backend, _) = destination(&first);
    let ack = Pkt {
        l4: L4::Tcp { syn: false },
        ..syn.clone()
    };
    for _ in 0..20 {
        let (action, out) = bed.run(&ack.bytes(), bed.xc);
        assert_eq!(action, XDP_REDIRECT);
        assert_bytes("same flow", &out, &ack.forwarded_to(backend, 8080).bytes());
    }
    let svc = bed.dp().service_traffic(0).unwrap();
    assert_eq!(
        (svc.packets, svc.new_flows),
        (21, 1),
        "one flow, 21 packets"
    );

    let mut seen = std::collections::BTreeSet::new();
    for sport in 41000..41060 {
        let p = Pkt::to_vip(CLIENT4, VIP4, sport, 80, L4::Tcp { syn: true });
        seen.insert(destination(&bed.run(&p.bytes(), bed.xc).1).0);
    }
    assert_eq!(seen.len(), 3, "60 flows reached only {seen:?}");
}

#[test]
fn a_reply_from_the_backend_is_rewritten_to_the_vip() {
    let mut bed = bed();
    let syn = Pkt::to_vip(CLIENT4, VIP4, 40003, 80, L4::Tcp { syn: true });
    let (_, out) = bed.run(&syn.bytes(), bed.xc);
    let (backend, _) = destination(&out);

    let reply = Pkt {
        eth_src: backend_mac(backend),
        eth_dst: XB_MAC,
        vlan: None,
        src: backend,
        dst: CLIENT4.parse().unwrap(),
        sport: 8080,
        dport: 40003,
        ttl: 64,
        ip_options: false,
        l4: L4::Tcp { syn: false },
        payload: b"hello back".to_vec(),
    };
    let (action, out) = bed.run(&reply.bytes(), bed.xb);
    assert_eq!(action, XDP_REDIRECT);
    let want = reply.returned_from(VIP4, 80);
    assert_bytes("reply", &out, &want.bytes());
    assert_eq!(bed.counter(Counter::ReplyTranslated), 1);

    // The same backend's packet to a client port with no tracked flow (its entry evicted, or
    // never written in flood mode) is still its service's reply: `REVERSE` translates it.
    let untracked = Pkt {
        dport: 40999,
        ..reply.clone()
    };
    let (action, out) = bed.run(&untracked.bytes(), bed.xb);
    assert_eq!(action, XDP_REDIRECT);
    assert_bytes(
        "untracked reply",
        &out,
        &untracked.returned_from(VIP4, 80).bytes(),
    );
    assert_eq!(bed.counter(Counter::ReplyTranslated), 2);

    // From the backend's port to this host itself: the balancer's own connection (a health
    // check), never a VIP reply. Untouched.
    let own = Pkt {
        dst: "10.0.11.1".parse().unwrap(),
        ..reply.clone()
    };
    let (action, out) = bed.run(&own.bytes(), bed.xb);
    assert_eq!(action, XDP_PASS);
    assert_bytes("health-check reply", &out, &own.bytes());
    assert_eq!(bed.counter(Counter::PassNotForwarded), 1);

    // From a port no service uses: not ours at all.
    let stray = Pkt {
        sport: 9999,
        ..reply
    };
    let (action, out) = bed.run(&stray.bytes(), bed.xb);
    assert_eq!(action, XDP_PASS);
    assert_bytes("stray", &out, &stray.bytes());
    assert_eq!(bed.counter(Counter::PassNotVip), 1);
}

#[test]
fn an_ipv6_vip_both_ways() {
    let mut bed = bed();
    let syn = Pkt::to_vip(CLIENT6, VIP6, 40004, 80, L4::Tcp { syn: true });
    let (action, out) = bed.run(&syn.bytes(), bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    let (backend, port) = destination(&out);
    assert!(backend.to_string().starts_with("fd00:11::"), "{backend}");
    assert_bytes("v6 syn", &out, &syn.forwarded_to(backend, port).bytes());

    let reply = Pkt {
        l4: L4::Tcp { syn: false },
        ..syn.reply_from(backend)
    };
    let (action, out) = bed.run(&reply.bytes(), bed.xb);
    assert_eq!(action, XDP_REDIRECT);
    let want = reply.returned_from(VIP6, 80);
    assert_bytes("v6 reply", &out, &want.bytes());
}

#[test]
fn a_udp_vip() {
    let mut bed = bed();
    let q = Pkt::to_vip(CLIENT4, VIP4, 5000, 53, L4::Udp);
    let (action, out) = bed.run(&q.bytes(), bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    let backend: IpAddr = "10.0.11.2".parse().unwrap();
    assert_bytes("udp", &out, &q.forwarded_to(backend, 5353).bytes());

    // A UDP datagram without a checksum (zero) keeps having none.
    let mut bytes = Pkt::to_vip(CLIENT4, VIP4, 5001, 53, L4::Udp).bytes();
    bytes[14 + 20 + 6] = 0;
    bytes[14 + 20 + 7] = 0;
    let (action, out) = bed.run(&bytes, bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert_eq!(destination(&out), (backend, 5353));
}

#[test]
fn a_packet_to_a_non_vip_passes_byte_for_byte() {
    let mut bed = bed();
    let cases = [
        Pkt::to_vip(CLIENT4, "10.0.0.99", 40005, 80, L4::Tcp { syn: true }),
        Pkt::to_vip(CLIENT4, VIP4, 40005, 81, L4::Tcp { syn: true }),
        Pkt::to_vip(CLIENT4, VIP4, 40005, 80, L4::Udp),
        Pkt::to_vip(CLIENT6, "fd00::99", 40005, 80, L4::Tcp { syn: true }),
    ];
    for (i, p) in cases.iter().enumerate() {
        let (action, out) = bed.run(&p.bytes(), bed.xc);
        assert_eq!(action, XDP_PASS, "case {i}");
        assert_bytes(&format!("non-VIP {i}"), &out, &p.bytes());
    }
    assert_eq!(bed.counter(Counter::PassNotVip), cases.len() as u64);

    // ARP is not IP at all.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let (action, out) = bed.run(&arp, bed.xc);
    assert_eq!((action, out), (XDP_PASS, arp));
    assert_eq!(bed.counter(Counter::PassNotIp), 1);
}

#[test]
fn truncated_headers_at_every_layer_pass_unchanged() {
    let mut bed = bed();
    let tcp4 = Pkt::to_vip(CLIENT4, VIP4, 40006, 80, L4::Tcp { syn: true });
    let udp4 = Pkt::to_vip(CLIENT4, VIP4, 40006, 53, L4::Udp);
    let tcp6 = Pkt::to_vip(CLIENT6, VIP6, 40006, 80, L4::Tcp { syn: true });
    let vlan = Pkt {
        vlan: Some(7),
        ..tcp4.clone()
    };
    let mut options = tcp4.clone();
    options.ip_options = true;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ethernet only", tcp4.bytes()[..14].to_vec()),
        ("half a VLAN tag", vlan.bytes()[..16].to_vec()),
        ("VLAN tag, no IP", vlan.bytes()[..18].to_vec()),
        ("half an IPv4 header", tcp4.bytes()[..14 + 10].to_vec()),
        ("IPv4 options cut", options.bytes()[..14 + 24].to_vec()),
        ("IPv4, no TCP", tcp4.bytes()[..14 + 20].to_vec()),
        ("IPv4, ports only", tcp4.bytes()[..14 + 20 + 4].to_vec()),
        (
            "IPv4, TCP without checksum",
            tcp4.bytes()[..14 + 20 + 16].to_vec(),
        ),
        (
            "IPv4, half a UDP header",
            udp4.bytes()[..14 + 20 + 6].to_vec(),
        ),
        ("half an IPv6 header", tcp6.bytes()[..14 + 30].to_vec()),
        ("IPv6, no TCP", tcp6.bytes()[..14 + 40].to_vec()),
        ("IPv6, TCP cut", tcp6.bytes()[..14 + 40 + 12].to_vec()),
    ];
    for (name, bytes) in &cases {
        let (action, out) = bed.run(bytes, bed.xc);
        assert_eq!(action, XDP_PASS, "{name}");
        assert_bytes(name, &out, bytes);
    }
    assert_eq!(bed.counter(Counter::PassTruncated), cases.len() as u64);
    assert_eq!(bed.counter(Counter::Redirect), 0);
}

/// Fragments to a VIP follow their first fragment: a 2800-byte UDP datagram cut in two reaches
/// the backend as two fragments of the translated datagram (the first one's checksum covering
/// all of it), over IPv4 and IPv6. A later fragment seen before any first passes untouched and
/// is counted.
#[test]
fn fragments_follow_their_first_fragment() {
    let mut bed = bed();
    for (v6, client, vip, backend) in [
        (false, CLIENT4, VIP4, "10.0.11.2"),
        (true, CLIENT6, VIP6, "fd00:11::2"),
    ] {
        let datagram = Pkt {
            payload: (0..2800).map(|i| (i % 251) as u8).collect(),
            ..Pkt::to_vip(client, vip, 40060, 53, L4::Udp)
        };
        let backend: IpAddr = backend.parse().unwrap();
        // Each fragment fits a 1500-byte MTU, with the fragment header over IPv6.
        let split = if v6 { 1448 } else { 1480 };
        let sent = fragments(&datagram.bytes(), v6, split, 7);
        let want = fragments(&datagram.forwarded_to(backend, 5353).bytes(), v6, split, 7);
        for (i, (frag, want)) in sent.iter().zip(&want).enumerate() {
            let (action, out) = bed.run(frag, bed.xc);
            assert_eq!(action, XDP_REDIRECT, "v6 {v6}: fragment {i}");
            assert_bytes(&format!("v6 {v6}: fragment {i}"), &out, want);
        }
        // A later fragment of a datagram whose first fragment never came.
        let [_, orphan] = fragments(&datagram.bytes(), v6, split, 99);
        let (action, out) = bed.run(&orphan, bed.xc);
        assert_eq!((action, &out), (XDP_PASS, &orphan), "v6 {v6}: orphan");
    }
    assert_eq!(bed.counter(Counter::FragmentTranslated), 2);
    assert_eq!(bed.counter(Counter::FragmentBeforeFirst), 2);
}

#[test]
fn a_vlan_tagged_packet_is_translated_and_left_to_the_stack() {
    let mut bed = bed();
    let syn = Pkt {
        vlan: Some(100),
        ..Pkt::to_vip(CLIENT4, VIP4, 40008, 80, L4::Tcp { syn: true })
    };
    let (action, out) = bed.run(&syn.bytes(), bed.xc);
    // The stack forwards it on the VLAN device (and decrements the TTL itself).
    assert_eq!(action, XDP_PASS);
    let (backend, _) = destination(&out);
    assert_bytes("vlan", &out, &syn.translated_to(backend, 8080).bytes());
    assert_eq!(bed.counter(Counter::PassVlan), 1);
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut bed = bed();
    let syn = Pkt::to_vip(CLIENT6, VIP6, 40009, 80, L4::Tcp { syn: true });
    let plain = syn.bytes();
    // Insert an 8-byte destination-options header (60) carrying PadN.
    let mut with_ext = plain[..14 + 40].to_vec();
    with_ext[14 + 6] = 60;
    let payload_len = u16::from_be_bytes([plain[18], plain[19]]) + 8;
    with_ext[18..20].copy_from_slice(&payload_len.to_be_bytes());
    with_ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    with_ext.extend_from_slice(&plain[14 + 40..]);
    let (action, out) = bed.run(&with_ext, bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    let (backend, port) = destination(&out);
    assert_eq!(port, 8080);
    // Same rewrite as without the extension header (but for the payload length and next-header
    // fields, which differ by construction), and the extension header untouched.
    let want = syn.forwarded_to(backend, 8080).bytes();
    assert_eq!(&out[14 + 4..14 + 7], &with_ext[14 + 4..14 + 7]);
    assert_eq!(&out[..14 + 4], &want[..14 + 4]);
    assert_eq!(&out[14 + 7..14 + 40], &want[14 + 7..14 + 40]);
    assert_eq!(&out[14 + 40..14 + 48], &[6, 0, 1, 4, 0, 0, 0, 0]);
    assert_eq!(&out[14 + 48..], &want[14 + 40..]);
}

#[test]
fn a_service_with_an_empty_ring_drops_and_counts() {
    let mut bed = bed();
    let config = Config::parse("test.toml".as_ref(), CONFIG).unwrap();
    let p = plan(&config);
    bed.dp().install_table(&p.services[0], &[]).unwrap();
    let syn = Pkt::to_vip(CLIENT4, VIP4, 40010, 80, L4::Tcp { syn: true });
    let (action, out) = bed.run(&syn.bytes(), bed.xc);
    assert_eq!(action, XDP_DROP);
    assert_bytes("dropped", &out, &syn.bytes());
    assert_eq!(bed.counter(Counter::DropNoBackend), 1);
}

#[test]
fn an_expiring_ttl_is_left_to_the_stack() {
    let mut bed = bed();
    // Untouched, before any rewrite: the stack's time-exceeded then quotes the VIP, never a
    // backend's address.
    let syn = Pkt {
        ttl: 1,
        ..Pkt::to_vip(CLIENT4, VIP4, 40011, 80, L4::Tcp { syn: true })
    };
    let (action, out) = bed.run(&syn.bytes(), bed.xc);
    assert_eq!(action, XDP_PASS);
    assert_bytes("ttl 1", &out, &syn.bytes());
    let syn6 = Pkt {
        ttl: 1,
        ..Pkt::to_vip(CLIENT6, VIP6, 40011, 80, L4::Tcp { syn: true })
    };
    let (action, out) = bed.run(&syn6.bytes(), bed.xc);
    assert_eq!(action, XDP_PASS);
    assert_bytes("hop limit 1", &out, &syn6.bytes());
    // A backend's reply with TTL 1 too.
    let live = Pkt::to_vip(CLIENT4, VIP4, 40012, 80, L4::Tcp { syn: true });
    let (_, out) = bed.run(&live.bytes(), bed.xc);
    let (backend, _) = destination(&out);
    let reply = Pkt {
        ttl: 1,
        ..live.reply_from(backend)
    };
    let (action, out) = bed.run(&reply.bytes(), bed.xb);
    assert_eq!(action, XDP_PASS);
    assert_bytes("reply ttl 1", &out, &reply.bytes());
    assert_eq!(bed.counter(Counter::PassTtl), 3);
}

/// Packets the program does not fully understand pass byte for byte, each under its counter:
/// two VLAN tags, an IPv6 routing header with segments left (the destination is not final yet),
/// and UDP over IPv6 with the zero checksum RFC 8200 forbids.
#[test]
fn odd_packets_pass_untouched_and_are_counted() {
    let mut bed = bed();
    let tagged = Pkt {
        vlan: Some(100),
        ..Pkt::to_vip(CLIENT4, VIP4, 40020, 80, L4::Tcp { syn: true })
    }
    .bytes();
    // QinQ: an 802.1ad outer tag in front of the 802.1Q one.
    let mut qinq = tagged[..12].to_vec();
    qinq.extend_from_slice(&[0x88, 0xa8, 0x00, 0xc8]);
    qinq.extend_from_slice(&tagged[12..]);
    let syn6 = Pkt::to_vip(CLIENT6, VIP6, 40021, 80, L4::Tcp { syn: true }).bytes();
    // A type-0-style routing header (43) with one segment left.
    let mut routed = syn6[..14 + 40].to_vec();
    routed[14 + 6] = 43;
    let payload_len = u16::from_be_bytes([syn6[18], syn6[19]]) + 8;
    routed[18..20].copy_from_slice(&payload_len.to_be_bytes());
    routed.extend_from_slice(&[6, 0, 4, 1, 0, 0, 0, 0]);
    routed.extend_from_slice(&syn6[14 + 40..]);
    let mut udp6 = Pkt::to_vip(CLIENT6, VIP6, 40022, 80, L4::Udp).bytes();
    udp6[14 + 40 + 6] = 0;
    udp6[14 + 40 + 7] = 0;
    let cases = [
        ("QinQ", qinq, Counter::PassQinq),
        (
            "routing header, 1 segment left",
            routed,
            Counter::PassRoutingHeader,
        ),
        (
            "UDP over IPv6, zero checksum",
            udp6,
            Counter::PassUdp6ZeroChecksum,
        ),
    ];
    for (what, packet, counter) in cases {
        let (action, out) = bed.run(&packet, bed.xc);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_bytes(what, &out, &packet);
        assert_eq!(bed.counter(counter), 1, "{what} counted");
    }
}

/// An established connection's packet (not a SYN) that misses `FLOWS` is still forwarded, and
/// counted: the flow loss operators need to see. A SYN is not.
#[test]
fn an_established_packet_missing_its_flow_is_counted() {
    let mut bed = bed();
    let ack = Pkt::to_vip(CLIENT4, VIP4, 40030, 80, L4::Tcp { syn: false });
    let (action, _) = bed.run(&ack.bytes(), bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    let syn = Pkt::to_vip(CLIENT4, VIP4, 40031, 80, L4::Tcp { syn: true });
    bed.run(&syn.bytes(), bed.xc);
    assert_eq!(bed.counter(Counter::FlowMissEstablished), 1);
}

/// A flow has one entry, in `FLOWS`; its replies are translated through `REVERSE`. So a reply
/// whose flow was evicted still leaves with the VIP as its source.
#[test]
fn a_reply_whose_flow_was_evicted_is_still_translated() {
    let mut bed = bed();
    let syn = Pkt::to_vip(CLIENT4, VIP4, 40040, 80, L4::Tcp { syn: true });
    let (_, out) = bed.run(&syn.bytes(), bed.xc);
    let (backend, _) = destination(&out);
    let (src, family) = lb_common::addr_words(syn.src);
    let (dst, _) = lb_common::addr_words(syn.dst);
    let flow_key = lb_common::FlowKey {
        src,
        dst,
        src_port: 40040u16.to_be(),
        dst_port: 80u16.to_be(),
        proto: lb_common::PROTO_TCP,
        family,
        _pad: 0,
    };
    {
        let map = bed.dp().ebpf_mut().map_mut("FLOWS").unwrap();
        let mut flows: aya::maps::HashMap<_, lb_common::FlowKey, lb_common::FlowValue> =
            aya::maps::HashMap::try_from(map).unwrap();
        flows.remove(&flow_key).expect("the flow was pinned");
    }
    let reply = syn.reply_from(backend);
    let (action, out) = bed.run(&reply.bytes(), bed.xb);
    assert_eq!(action, XDP_REDIRECT);
    let want = reply.returned_from(VIP4, 80);
    assert_bytes("reply of an evicted flow", &out, &want.bytes());
    assert_eq!(bed.counter(Counter::ReplyTranslated), 1);
}

/// How `BPF_F_NO_COMMON_LRU` splits the flow maps: each possible CPU owns an equal share, and a
/// flow takes its entry from the share of the CPU that saw its first packet. Flows all seen on
/// one CPU therefore fill only `max_flows / possible CPUs` entries before evicting each other.
/// The memory the maps hold is measured too (both figures are in the README).
#[test]
fn the_per_cpu_lru_gives_each_cpu_an_equal_share_of_max_flows() {
    const MAX_FLOWS: u32 = 8192;
    // 16,384 SYNs in a moment are a flood to the guard, which would stop writing them.
    let config = CONFIG.replace(
        "interfaces = [\"xc\", \"xb\"]",
        "interfaces = [\"xc\", \"xb\"], flood_threshold = 0",
    );
    assert_ne!(config, CONFIG);
    let mut bed = support::bed_sized(&config, MAX_FLOWS);
    // SAFETY: a plain syscall on this thread's own affinity mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let possible = understudy::dataplane::possible_cpus();
    for port in 0..(2 * MAX_FLOWS) {
        let syn = Pkt::to_vip(
            CLIENT4,
            VIP4,
            10_000 + port as u16,
            80,
            L4::Tcp { syn: true },
        );
        bed.run(&syn.bytes(), bed.xc);
    }
    let flows = {
        let map = bed.dp().ebpf_mut().map_mut("FLOWS").unwrap();
        let m: aya::maps::HashMap<_, lb_common::FlowKey, lb_common::FlowValue> =
            aya::maps::HashMap::try_from(map).unwrap();
        m.keys().filter_map(Result::ok).count() as u32
    };
    let share = MAX_FLOWS / possible;
    eprintln!(
        "FLOWS of {MAX_FLOWS}, {possible} possible CPUs: {flows} entries after {} flows on one CPU; \
         flow maps hold {} bytes ({} per flow)",
        2 * MAX_FLOWS,
        bed.dp().flows_memory().unwrap(),
        bed.dp().flows_memory().unwrap() / u64::from(MAX_FLOWS)
    );
    assert!(
        flows <= share && flows >= share * 9 / 10,
        "{flows} entries; one CPU's share is {share}"
    );
    assert_eq!(bed.dp().flows_capacity().unwrap(), MAX_FLOWS);
}

/// A Packet Too Big from a router on the client's path, about a translated IPv6 reply, reaches
/// the backend quoting the backend's own packet, with the ICMPv6 checksum (pseudo-header
/// included) whole: path-MTU discovery works over IPv6 through the balancer.
#[test]
fn an_ipv6_packet_too_big_reaches_the_backend() {
    let mut bed = bed();
    let syn = Pkt::to_vip(CLIENT6, VIP6, 40050, 80, L4::Tcp { syn: true });
    let (_, out) = bed.run(&syn.bytes(), bed.xc);
    let (backend, _) = destination(&out);
    let IpAddr::V6(b6) = backend else {
        unreachable!()
    };
    let reply = Pkt {
        l4: L4::Tcp { syn: false },
        ..syn.reply_from(backend)
    };
    let (_, translated) = bed.run(&reply.bytes(), bed.xb);
    let router: std::net::Ipv6Addr = "fd00:1::1".parse().unwrap();
    let vip: std::net::Ipv6Addr = VIP6.parse().unwrap();
    let quoted = &translated[14..14 + 48];
    let mut from_router = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, XC_MAC)
        .ipv6(router.octets(), vip.octets(), 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut from_router, quoted)
        .unwrap();
    let (action, got) = bed.run(&from_router, bed.xc);
    assert_eq!(action, XDP_REDIRECT, "on to the backend");
    let (mut ip, rest) = etherparse::Ipv6Header::from_slice(quoted).unwrap();
    ip.source = b6.octets();
    let mut requoted = ip.to_bytes().to_vec();
    let mut l4 = rest.to_vec();
    l4[0..2].copy_from_slice(&8080u16.to_be_bytes());
    requoted.extend_from_slice(&l4);
    let mut want = Vec::new();
    etherparse::PacketBuilder::ethernet2(XB_MAC, backend_mac(backend))
        .ipv6(router.octets(), b6.octets(), 63)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut want, &requoted)
        .unwrap();
    assert_bytes("packet too big", &got, &want);
    assert_eq!(bed.counter(Counter::IcmpToBackend), 1);
}

/// The object operators load carries the production program alone: the bench wrappers (and
/// their prog array) are built in only for `cargo xtask bench xdp`.
#[test]
fn the_production_object_has_no_bench_programs() {
    understudy_testbed::require_root("the XDP object test");
    let mut dp = understudy::dataplane::Dataplane::load().unwrap();
    assert!(dp.program(understudy::dataplane::XDP_PROGRAM).is_ok());
    for name in ["bench_wrapper", "bench_pass"] {
        assert!(
            dp.program(name).is_err(),
            "{name} is in the production object"
        );
    }
    assert!(dp.ebpf_mut().map("BENCH_TARGET").is_none());
}

/// The map names user space uses (`lb_common::map_names`) are exactly the maps of the object the
/// kernel side builds (besides aya-log's own), so the two lists cannot drift.
#[test]
fn the_shared_map_names_are_the_objects_maps() {
    understudy_testbed::require_root("the map names test");
    let ebpf = aya::Ebpf::load(understudy::dataplane::EBPF_OBJECT).unwrap();
    let mut in_object: Vec<&str> = ebpf
        .maps()
        .map(|(name, _)| name)
        // aya-log's maps and the compiler's data sections (.rodata) are not ours to name.
        .filter(|name| !name.starts_with("AYA_") && !name.starts_with('.'))
        .collect();
    in_object.sort_unstable();
    let mut shared = lb_common::map_names::ALL.to_vec();
    shared.sort_unstable();
    assert_eq!(in_object, shared);
}

/// The kernel accepts the objects' BTF (their Rust type names made valid at build time, see
/// `btf_names.rs`), so every program carries it and verifier logs show source lines. Before,
/// the kernel refused `MaybeUninit<u8>` and aya loaded the programs without BTF.
#[test]
fn the_programs_load_with_their_btf() {
    understudy_testbed::require_root("the BTF test");
    for (object, program) in [
        (understudy::dataplane::EBPF_OBJECT, "understudy_xdp"),
        (understudy::decap::DECAP_OBJECT, "understudy_decap"),
    ] {
        let mut ebpf = aya::Ebpf::load(object).unwrap();
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(program).unwrap().try_into().unwrap();
        prog.load().unwrap();
        let info = prog.info().unwrap();
        assert!(
            info.btf_id().is_some(),
            "{program} was loaded without BTF: the kernel refused the object's BTF"
        );
    }
}
