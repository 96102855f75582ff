//! Edge protection in the kernel (`test_run` on crafted packets): the access lists over IPv4 and
//! IPv6 with overlapping prefixes, a reload that changes them, the per-source rate limit's
//! bucket and its refill (the clock is driven through the bucket's timestamp), and the SYN-flood
//! guard switching on and off.

mod support;

use aya::maps::{HashMap, MapData, PerCpuValues};
use lb_common::{
    Counter,
    edge::{Bucket, BucketKey, DropReason, Flood},
    map_names::RATE_BUCKETS,
};
use support::*;
use understudy::config::Config;

/// Keeps the test on one CPU: the flood guard's state is per CPU.
fn pin_to_cpu0() {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

fn syn(src: &str, dst: &str, sport: u16) -> Pkt {
    Pkt::to_vip(src, dst, sport, 80, L4::Tcp { syn: true })
}

fn refusals(bed: &mut Bed, service: u32, reason: DropReason) -> u64 {
    let all = bed.dp().edge.refusals(service).unwrap();
    all.iter().find(|(r, _)| *r == reason).unwrap().1
}

const ACL: &str = r#"
dataplane = { interfaces = ["xc", "xb"], acl = { deny = ["10.0.1.128/25", "fd00:1::dead/128"] } }

[[service]]
name = "web"
vip = "10.0.0.10:80"
backend = [{ address = "10.0.11.2:8080" }]
# 10.0.1.96/27 lies inside the denied 10.0.1.64/26: deny wins.
acl = { allow = ["10.0.1.0/24", "10.0.1.96/27", "fd00:1::/64"], deny = ["10.0.1.64/26", "fd00:1::bad/128"] }

[[service]]
name = "web6"
vip = "[fd00::10]:80"
backend = [{ address = "[fd00:11::2]:8080" }]
acl = { allow = ["fd00:1::/64"], deny = ["fd00:1::bad/128"], action = "reset" }
"#;

#[test]
fn access_lists_refuse_by_longest_prefix_and_deny_wins() {
    let mut bed = bed(ACL);
    // (source, VIP, service id, refused for)
    let table: &[(&str, &str, u32, Option<DropReason>)] = &[
        ("10.0.1.2", VIP4, 0, None),
        ("10.0.1.63", VIP4, 0, None),
        ("10.0.1.70", VIP4, 0, Some(DropReason::Deny)),
        ("10.0.1.100", VIP4, 0, Some(DropReason::Deny)),
        ("10.0.1.200", VIP4, 0, Some(DropReason::GlobalDeny)),
        ("10.0.2.5", VIP4, 0, Some(DropReason::NotAllowed)),
        ("fd00:1::2", VIP6, 1, None),
        ("fd00:1::bad", VIP6, 1, Some(DropReason::Deny)),
        ("fd00:1::dead", VIP6, 1, Some(DropReason::GlobalDeny)),
        ("fd00:2::1", VIP6, 1, Some(DropReason::NotAllowed)),
    ];
    let config = Config::parse("test.toml".as_ref(), ACL).unwrap();
    let plan = understudy::plan::plan(&config);
    for (i, &(src, vip, service, refused)) in table.iter().enumerate() {
        // `understudy explain`'s model of the lists must agree with the kernel.
        assert_eq!(
            plan.edge
                .refusal(&plan.services[service as usize], src.parse().unwrap()),
            refused.map(DropReason::name),
            "explain's verdict on {src}"
        );
        let before = refused.map(|r| refusals(&mut bed, service, r));
        let pkt = syn(src, vip, 41000 + i as u16);
        let (action, out) = bed.run(&pkt.bytes(), bed.xc);
        match refused {
            None => assert_eq!(action, XDP_REDIRECT, "{src} must be let through"),
            Some(reason) => {
                assert_eq!(
                    refusals(&mut bed, service, reason),
                    before.unwrap() + 1,
                    "{src}: counted as {}",
                    reason.name()
                );
                if service == 1 {
                    // action = "reset": a RST back to the client, from the VIP.
                    assert_eq!(action, XDP_TX, "{src}: a RST");
                    assert_eq!(&out[0..6], &pkt.eth_src, "{src}: back to the client");
                    assert_eq!(out[14 + 40 + 13] & 0x04, 0x04, "{src}: RST flag");
                } else {
                    assert_eq!(action, XDP_DROP, "{src}: dropped");
                }
            }
        }
    }
    assert_eq!(bed.counter(Counter::DropRefused), 4);
    assert_eq!(bed.counter(Counter::RefuseRst), 3);
}

#[test]
fn a_reload_applies_new_lists_and_keeps_allowed_flows() {
    let mut bed = bed(ACL);
    let kept = Pkt::to_vip("10.0.1.2", VIP4, 42000, 80, L4::Tcp { syn: true });
    let cut = Pkt::to_vip("10.0.1.30", VIP4, 42001, 80, L4::Tcp { syn: true });
    for p in [&kept, &cut] {
        assert_eq!(bed.run(&p.bytes(), bed.xc).0, XDP_REDIRECT);
    }
    // Deny 10.0.1.16/28 (which holds .30 but not .2), and drop the global list.
    let next = ACL
        .replace(
            r#", acl = { deny = ["10.0.1.128/25", "fd00:1::dead/128"] }"#,
            "",
        )
        .replace(r#"deny = ["10.0.1.64/26""#, r#"deny = ["10.0.1.16/28""#);
    let config = Config::parse("test.toml".as_ref(), &next).unwrap();
    bed.writer.reload(&config).unwrap();

    let pinned = bed
        .dp()
        .flow(&flow_key(&kept))
        .expect("the allowed flow is pinned");
    let ack = |p: &Pkt| Pkt {
        l4: L4::Tcp { syn: false },
        ..p.clone()
    };
    assert_eq!(bed.run(&ack(&kept).bytes(), bed.xc).0, XDP_REDIRECT);
    assert_eq!(
        bed.dp().flow(&flow_key(&kept)),
        Some(pinned),
        "untouched by the reload"
    );
    assert_eq!(
        bed.run(&ack(&cut).bytes(), bed.xc).0,
        XDP_DROP,
        "newly denied"
    );
    // The old global deny is gone, and the old service deny with it.
    for src in ["10.0.1.200", "10.0.1.70"] {
        assert_eq!(
            bed.run(&syn(src, VIP4, 42002).bytes(), bed.xc).0,
            XDP_REDIRECT,
            "{src} is allowed after the reload"
        );
    }
}

const LIMITED: &str = r#"
dataplane = { interfaces = ["xc", "xb"] }

[[service]]
name = "web"
vip = "10.0.0.10:80"
backend = [{ address = "10.0.11.2:8080" }]
rate_limit = { connections_per_second = 2, burst = 3, exempt = ["10.0.1.9/32"] }

[[service]]
name = "web6"
vip = "[fd00::10]:80"
backend = [{ address = "[fd00:11::2]:8080" }]
rate_limit = { connections_per_second = 1, burst = 1, ipv6_prefix = 64, action = "reset" }
"#;

#[test]
fn the_rate_limit_cuts_a_source_at_its_burst_and_refills_with_time() {
    let mut bed = bed(LIMITED);
    let mut port = 43000;
    let mut open = |bed: &mut Bed, src: &str, vip: &str| {
        port += 1;
        bed.run(&syn(src, vip, port).bytes(), bed.xc).0
    };
    for i in 0..3 {
        assert_eq!(
            open(&mut bed, "10.0.1.2", VIP4),
            XDP_REDIRECT,
            "within the burst ({i})"
        );
    }
    assert_eq!(open(&mut bed, "10.0.1.2", VIP4), XDP_DROP, "past the burst");
    assert_eq!(refusals(&mut bed, 0, DropReason::RateLimited), 1);
    // Another source has its own bucket; an exempt one has none.
    assert_eq!(open(&mut bed, "10.0.1.3", VIP4), XDP_REDIRECT);
    for _ in 0..10 {
        assert_eq!(open(&mut bed, "10.0.1.9", VIP4), XDP_REDIRECT, "exempt");
    }
    // An established flow's packets are never charged.
    let first = Pkt::to_vip("10.0.1.2", VIP4, 43001, 80, L4::Tcp { syn: false });
    for _ in 0..5 {
        assert_eq!(bed.run(&first.bytes(), bed.xc).0, XDP_REDIRECT);
    }

    // One second later (the bucket's clock moved back by 1 s): two more tokens, not three.
    {
        let map = bed.dp().ebpf_mut().map_mut(RATE_BUCKETS).unwrap();
        let mut buckets: HashMap<&mut MapData, BucketKey, Bucket> = HashMap::try_from(map).unwrap();
        let (addr, _) = lb_common::addr_words("10.0.1.2".parse().unwrap());
        let key = BucketKey {
            addr,
            service: 0,
            family: lb_common::FAMILY_V4 as u32,
        };
        let mut b = buckets.get(&key, 0).expect("the source's bucket");
        assert!(b.nanotokens < lb_common::edge::TOKEN, "empty: {b:?}");
        b.at_ns -= 1_000_000_000;
        buckets.insert(key, b, 0).unwrap();
    }
    assert_eq!(
        open(&mut bed, "10.0.1.2", VIP4),
        XDP_REDIRECT,
        "refilled (1)"
    );
    assert_eq!(
        open(&mut bed, "10.0.1.2", VIP4),
        XDP_REDIRECT,
        "refilled (2)"
    );
    assert_eq!(
        open(&mut bed, "10.0.1.2", VIP4),
        XDP_DROP,
        "only 2 per second"
    );

    // By /64: two addresses of one prefix share a bucket of one; the refusal is a RST.
    assert_eq!(open(&mut bed, "fd00:1::2", VIP6), XDP_REDIRECT);
    assert_eq!(open(&mut bed, "fd00:1::77", VIP6), XDP_TX, "same /64: RST");
    assert_eq!(
        open(&mut bed, "fd00:2::2", VIP6),
        XDP_REDIRECT,
        "another /64"
    );
    assert_eq!(refusals(&mut bed, 1, DropReason::RateLimited), 1);
    assert_eq!(bed.counter(Counter::RefuseRst), 1);
}

const FLOODED: &str = r#"
# 30 SYNs per second per CPU: 3 per 100 ms window.
dataplane = { interfaces = ["xc", "xb"], flood_threshold = 30 }

[[service]]
name = "web"
vip = "10.0.0.10:80"
backend = [{ address = "10.0.11.2:8080" }, { address = "10.0.11.3:8080" }]
"#;

#[test]
fn the_flood_guard_stops_writing_syns_and_steps_back() {
    pin_to_cpu0();
    let mut bed = bed(FLOODED);
    let established = syn(CLIENT4, VIP4, 44000);
    assert_eq!(bed.run(&established.bytes(), bed.xc).0, XDP_REDIRECT);
    let mut flood = Vec::new();
    for i in 1..=5 {
        let p = syn(CLIENT4, VIP4, 44000 + i);
        let (action, out) = bed.run(&p.bytes(), bed.xc);
        assert_eq!(
            action, XDP_REDIRECT,
            "a SYN in flood mode still goes to its backend"
        );
        flood.push((p, out));
    }
    assert_eq!(bed.counter(Counter::FloodEnter), 1);
    // The established flow's SYN and the next two were within the threshold (3 per window);
    // the fourth passed it, and it and the rest are left unwritten.
    assert_eq!(bed.counter(Counter::FloodUnwritten), 3);
    assert!(bed.dp().flow(&flow_key(&established)).is_some());
    assert!(bed.dp().flow(&flow_key(&flood[1].0)).is_some());
    for (p, _) in &flood[2..] {
        assert!(
            bed.dp().flow(&flow_key(p)).is_none(),
            "unwritten: {}",
            p.sport
        );
    }
    let f = bed.dp().edge.flood().unwrap();
    assert!(f[0].active, "CPU 0 is in flood mode: {f:?}");

    // The unwritten flow's SYN-ACK is translated (through REVERSE, as every reply), and its
    // ACK writes the flow.
    let (p, out) = &flood[4];
    let (backend, _) = destination(out);
    let synack = Pkt {
        l4: L4::SynAck,
        ..p.reply_from(backend)
    };
    let (action, out) = bed.run(&synack.bytes(), bed.xb);
    assert_eq!(action, XDP_REDIRECT);
    assert_bytes("syn-ack", &out, &synack.returned_from(VIP4, 80).bytes());
    let ack = Pkt {
        l4: L4::Tcp { syn: false },
        ..p.clone()
    };
    assert_eq!(bed.run(&ack.bytes(), bed.xc).0, XDP_REDIRECT);
    assert!(
        bed.dp().flow(&flow_key(p)).is_some(),
        "the handshake's ACK writes it"
    );

    // Two quiet windows later (the window moved back by 300 ms), the guard steps back.
    {
        let state = bed.dp().edge.flood_map();
        let mut per_cpu: Vec<Flood> = state.get(&0, 0).unwrap().iter().copied().collect();
        for f in &mut per_cpu {
            f.window_start_ns = f.window_start_ns.saturating_sub(300_000_000);
        }
        state
            .set(0, PerCpuValues::try_from(per_cpu).unwrap(), 0)
            .unwrap();
    }
    let after = syn(CLIENT4, VIP4, 44100);
    assert_eq!(bed.run(&after.bytes(), bed.xc).0, XDP_REDIRECT);
    assert_eq!(bed.counter(Counter::FloodLeave), 1);
    assert!(bed.dp().flow(&flow_key(&after)).is_some(), "written again");
    assert!(!bed.dp().edge.flood().unwrap()[0].active);
}

#[test]
fn established_flows_use_the_cached_next_hop_until_it_goes_stale() {
    let mut bed = bed(FLOODED.replace(", flood_threshold = 30", "").as_str());
    let lookups = |bed: &Bed| bed.counter(Counter::NextHopLookup);
    let first = syn(CLIENT4, VIP4, 45000);
    let (_, out) = bed.run(&first.bytes(), bed.xc);
    let (backend, _) = destination(&out);
    assert_eq!(&out[0..6], &backend_mac(backend), "to the backend's MAC");
    assert_eq!(lookups(&bed), 1, "the first packet asks the FIB");
    let ack = Pkt {
        l4: L4::Tcp { syn: false },
        ..first.clone()
    };
    for _ in 0..3 {
        let (action, out) = bed.run(&ack.bytes(), bed.xc);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(&out[0..6], &backend_mac(backend));
    }
    assert_eq!(lookups(&bed), 1, "established packets use the cached hop");

    // The neighbour moves. Until the hops are marked stale the cache still answers (which is
    // why the daemon watches neighbour events); then the FIB's new answer is used and cached.
    let moved = [0x02, 0, 0, 0, 0x99, 0x99];
    let mac = moved.map(|b| format!("{b:02x}")).join(":");
    bed.ns.ip(&[
        "neigh",
        "replace",
        &backend.to_string(),
        "lladdr",
        &mac,
        "dev",
        "xb",
        "nud",
        "permanent",
    ]);
    let (_, out) = bed.run(&ack.bytes(), bed.xc);
    assert_eq!(&out[0..6], &backend_mac(backend), "still cached");
    bed.dp().edge.invalidate_hops().unwrap();
    let (_, out) = bed.run(&ack.bytes(), bed.xc);
    assert_eq!(&out[0..6], &moved, "stale: the FIB's new neighbour");
    assert_eq!(lookups(&bed), 2);
    let (_, out) = bed.run(&ack.bytes(), bed.xc);
    assert_eq!(&out[0..6], &moved);
    assert_eq!(lookups(&bed), 2, "cached again");

    // A packet longer than any the hop has carried asks the FIB (its MTU check) once.
    let long = Pkt {
        payload: vec![7; 1000],
        ..ack.clone()
    };
    for want in [3, 3] {
        assert_eq!(bed.run(&long.bytes(), bed.xc).0, XDP_REDIRECT);
        assert_eq!(lookups(&bed), want);
    }

    // Off (the daemon could not watch changes): every packet asks the FIB.
    bed.dp().edge.disable_hops().unwrap();
    for want in [4, 5] {
        assert_eq!(bed.run(&ack.bytes(), bed.xc).0, XDP_REDIRECT);
        assert_eq!(lookups(&bed), want);
    }
}
