//! Failover in the kernel, through `BPF_PROG_TEST_RUN`: the map writer marks backends down and
//! up exactly as the daemon does, and crafted packets show what the XDP program then does with
//! established flows, new flows, `on_all_down`, and the passive-detection events it reports.

mod support;

use std::{net::IpAddr, time::Instant};

use etherparse::{
    Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice, icmpv4::DestUnreachableHeader,
};
use lb_common::{BackendEvent, Counter, EventKind};
use support::*;
use understudy::health::Update;

const CONFIG: &str = r#"
dataplane = { interfaces = ["xc", "xb"] }

[[service]]
name = "web"
vip = "10.0.0.10:80"
table_size = 307
passive = { syn_timeout = "20ms" }
backend = [
    { address = "10.0.11.2:8080" },
    { address = "10.0.11.3:8080" },
    { address = "10.0.11.4:8080", tier = 1 },
]

[[service]]
name = "reject"
vip = "10.0.0.10:81"
on_all_down = "reject"
table_size = 101
backend = [{ address = "10.0.11.2:8081" }]

[[service]]
name = "reject6"
vip = "[fd00::10]:81"
on_all_down = "reject"
table_size = 101
backend = [{ address = "[fd00:11::2]:8081" }]
"#;

/// `CONFIG` with its 20 ms `syn_timeout` scaled by `understudy_testbed::slowdown`: under
/// emulation (the kernel matrix's TCG guest, 10x) a test's own steps take longer than 20 ms, and
/// a SYN meant as an immediate retransmission would read as a timed-out one.
fn config() -> String {
    CONFIG.replace(
        "syn_timeout = \"20ms\"",
        &format!(
            "syn_timeout = \"{}ms\"",
            20 * understudy_testbed::slowdown()
        ),
    )
}

/// A wait longer than `config()`'s `syn_timeout`.
fn past_syn_timeout() -> std::time::Duration {
    understudy_testbed::scaled(std::time::Duration::from_millis(30))
}

/// Backend ids in plan order.
const WEB: [&str; 3] = ["10.0.11.2", "10.0.11.3", "10.0.11.4"];
const REJECT4: u32 = 3;
const REJECT6: u32 = 4;

fn id_of(backend: IpAddr) -> u32 {
    WEB.iter().position(|w| *w == backend.to_string()).unwrap() as u32
}

fn set(bed: &mut Bed, backend: u32, up: bool) {
    let generation = bed.writer.generation_of(backend).unwrap();
    bed.writer
        .apply(&[Update {
            backend,
            generation,
            task: 0,
            up,
            reason: "test".into(),
            decided: Instant::now(),
        }])
        .unwrap();
}

#[test]
fn the_incremental_writer_installs_exactly_the_derived_table() {
    let text = r#"
[dataplane]
interfaces = ["lo"]
[[service]]
name = "tiers"
vip = "10.0.0.10:80"
table_size = 4099
min_healthy = 2
on_all_down = "reject"
[[service.backend]]
address = "10.0.11.2:80"
[[service.backend]]
address = "10.0.11.3:80"
[[service.backend]]
address = "10.0.11.4:80"
weight = 2
[[service.backend]]
address = "10.0.12.2:80"
tier = 1
[[service.backend]]
address = "10.0.12.3:80"
tier = 1
[[service.backend]]
address = "10.0.13.2:80"
tier = 2
"#;
    require_root();
    let config = understudy::config::Config::parse("t.toml".as_ref(), text).unwrap();
    let p = understudy::plan::plan(&config);
    let dp = understudy::dataplane::Dataplane::load().unwrap();
    let mut writer = understudy::writer::Writer::new(dp, p.clone());
    writer.install().unwrap();
    let svc = &p.services[0];
    let mut healthy = vec![true; 6];
    let mut rng = fastrand::Rng::with_seed(11);
    for step in 0..300 {
        // One to three changes per batch, as the writer receives them.
        let batch: Vec<Update> = (0..rng.usize(1..=3))
            .map(|_| {
                let b = rng.usize(..6);
                healthy[b] = rng.bool();
                Update {
                    backend: b as u32,
                    generation: writer.generation_of(b as u32).unwrap(),
                    task: 0,
                    up: healthy[b],
                    reason: "test".into(),
                    decided: Instant::now(),
                }
            })
            .collect();
        writer.apply(&batch).unwrap();
        assert_eq!(
            kernel_choice(writer.dataplane(), svc),
            svc.table_for(&healthy),
            "step {step}: health {healthy:?}"
        );
    }
}

/// The backend the kernel chooses in each entry of `svc`'s active ring, given the `ALIVE` bits
/// in `BACKENDS` (an entry's alternative serves while its backend is down).
fn kernel_choice(
    dp: &understudy::dataplane::Dataplane,
    svc: &understudy::plan::PlannedService,
) -> Vec<u32> {
    let alive = |id: u32| {
        dp.backend_entry(id)
            .is_some_and(|b| b.state & lb_common::BACKEND_ALIVE != 0)
    };
    dp.active_ring(svc)
        .into_iter()
        .map(|e| lb_common::ring_entry::choose(e, alive))
        .collect()
}

/// Writes backend `id`'s `ALIVE` bit and nothing else, as the writer's first step does.
fn flip_alive_bit(bed: &mut Bed, id: u32, alive: bool) {
    let mut info = bed.dp().backend_entry(id).unwrap();
    info.state = if alive { lb_common::BACKEND_ALIVE } else { 0 };
    bed.dp().set_backend(id, &info).unwrap();
}

/// The kernel's own choice for a new flow from `sport` (a SYN through `test_run`).
fn chosen(bed: &mut Bed, sport: u16) -> IpAddr {
    destination(&bed.run(&syn(sport).bytes(), bed.xc).1).0
}

/// Where the planned table for `healthy` sends a new flow from `sport`.
fn planned(svc: &understudy::plan::PlannedService, healthy: &[bool], sport: u16) -> IpAddr {
    let table = svc.table_for(healthy);
    let client = std::net::SocketAddr::new(CLIENT4.parse().unwrap(), sport);
    let hash = understudy::explain::placement_hash(svc, client);
    let id = table[(hash % table.len() as u32) as usize];
    svc.members
        .iter()
        .find(|m| m.id == id)
        .unwrap()
        .address
        .ip()
}

/// The writer's promise: one backend failing, or coming back, is visible to the kernel with its
/// `ALIVE` bit alone. Before any ring entry is rewritten, new flows already go where the new
/// table sends them; and the writer reports that the bits sufficed.
#[test]
fn one_backends_alive_bit_alone_sends_new_flows_where_the_new_table_does() {
    let text = config();
    let mut bed = bed(&text);
    let plan = understudy::plan::plan(
        &understudy::config::Config::parse("t.toml".as_ref(), &text).unwrap(),
    );
    let svc = plan.services[0].clone();
    let all = [true, true, true];
    for (m, sports) in [(0u32, 50000u16), (1, 52000)] {
        let mut without = all;
        without[m as usize] = false;
        let moving = (sports..sports + 300)
            .filter(|&p| planned(&svc, &all, p) != planned(&svc, &without, p))
            .count();
        assert!(
            moving > 50,
            "only {moving} of 300 flows would move: the test shows nothing"
        );

        // Failure: the bit alone.
        flip_alive_bit(&mut bed, m, false);
        let before = bed.counter(Counter::RingAlternative);
        for sport in sports..sports + 300 {
            assert_eq!(
                chosen(&mut bed, sport),
                planned(&svc, &without, sport),
                "backend {m} down by its bit alone: port {sport}"
            );
        }
        assert_eq!(
            bed.counter(Counter::RingAlternative) - before,
            moving as u64,
            "every moved flow is counted as sent to an alternative"
        );
        // The writer, told the same, finds the bits sufficed and prepares the recovery.
        let applied = bed.writer.apply(&[update(&bed, m, false)]).unwrap();
        assert_eq!(
            applied.by_bits, 1,
            "backend {m}'s failure needed a table write"
        );

        // Recovery: the bit alone again.
        flip_alive_bit(&mut bed, m, true);
        for sport in sports + 1000..sports + 1300 {
            assert_eq!(
                chosen(&mut bed, sport),
                planned(&svc, &all, sport),
                "backend {m} back by its bit alone: port {sport}"
            );
        }
        let applied = bed.writer.apply(&[update(&bed, m, true)]).unwrap();
        assert_eq!(
            applied.by_bits, 1,
            "backend {m}'s recovery needed a table write"
        );
        assert_eq!(
            kernel_choice(bed.writer.dataplane(), &svc),
            svc.table_for(&all)
        );
    }

    // Two primaries down by their bits alone: their entries' alternatives are each other, so
    // those flows stay put until the writer writes the table, and say so.
    flip_alive_bit(&mut bed, 0, false);
    flip_alive_bit(&mut bed, 1, false);
    let (_, out) = bed.run(&syn(55000).bytes(), bed.xc);
    assert_ne!(destination(&out).0.to_string(), WEB[2]);
    assert_eq!(bed.counter(Counter::RingStale), 1);
    flip_alive_bit(&mut bed, 0, true);
    flip_alive_bit(&mut bed, 1, true);

    // Two primaries down at once: the bits cannot say it (the backup tier takes over), so the
    // writer writes the table before counting the change visible, and the kernel agrees.
    let batch = [update(&bed, 0, false), update(&bed, 1, false)];
    let applied = bed.writer.apply(&batch).unwrap();
    assert_eq!(applied.by_bits, 0);
    let backup = [false, false, true];
    assert_eq!(
        kernel_choice(bed.writer.dataplane(), &svc),
        svc.table_for(&backup)
    );
    for sport in 56000..56100 {
        assert_eq!(chosen(&mut bed, sport), planned(&svc, &backup, sport));
    }
}

fn update(bed: &Bed, backend: u32, up: bool) -> Update {
    Update {
        backend,
        generation: bed.writer.generation_of(backend).unwrap(),
        task: 0,
        up,
        reason: "test".into(),
        decided: Instant::now(),
    }
}

fn require_root() {
    understudy_testbed::require_root("the writer test");
}

fn syn(sport: u16) -> Pkt {
    Pkt::to_vip(CLIENT4, VIP4, sport, 80, L4::Tcp { syn: true })
}

#[test]
fn a_flow_pinned_to_a_dead_backend_is_reselected_onto_a_live_one() {
    let mut bed = bed(&config());
    let first = syn(42000);
    let (_, out) = bed.run(&first.bytes(), bed.xc);
    let (pinned, _) = destination(&out);
    let pinned_id = id_of(pinned);
    assert!(
        pinned_id < 2,
        "a new flow went to the backup while primaries are up"
    );

    set(&mut bed, pinned_id, false);
    let ack = Pkt {
        l4: L4::Tcp { syn: false },
        ..first.clone()
    };
    let moved_to = assert_reselected(
        &mut bed,
        &ack,
        pinned_id,
        "re-selected onto the other primary",
    );

    // New flows avoid the dead backend entirely.
    for sport in 43000..43100 {
        let (_, out) = bed.run(&syn(sport).bytes(), bed.xc);
        assert_ne!(
            destination(&out).0,
            pinned,
            "a new flow reached the dead backend"
        );
    }

    // Back up: the moved flow stays where it is now; new flows reach the backend again.
    set(&mut bed, pinned_id, true);
    let (_, out) = bed.run(&ack.bytes(), bed.xc);
    assert_eq!(destination(&out).0, moved_to, "the moved flow flapped back");
    let reached = (44000..44100)
        .map(|sport| destination(&bed.run(&syn(sport).bytes(), bed.xc).1).0)
        .filter(|b| *b == pinned)
        .count();
    assert!(
        reached > 20,
        "only {reached} of 100 new flows reached the recovered backend"
    );
}

/// Sends `pkt` and checks that its flow, pinned to primary `pinned_id`, was re-selected onto the
/// other primary: redirected, exactly `pkt` forwarded there, counted once as `reselected`.
/// Returns where it went.
fn assert_reselected(bed: &mut Bed, pkt: &Pkt, pinned_id: u32, why: &str) -> IpAddr {
    let (action, out) = bed.run(&pkt.bytes(), bed.xc);
    assert_eq!(action, XDP_REDIRECT);
    let (to, _) = destination(&out);
    assert_eq!(id_of(to), 1 - pinned_id, "{why}");
    assert_bytes(why, &out, &pkt.forwarded_to(to, 8080).bytes());
    assert_eq!(bed.counter(Counter::Reselected), 1);
    to
}

/// A client port reused while the old connection's `FLOWS` entry lives: the new SYN is a new
/// connection, so it must not follow the entry to a drained backend (found by the soak, where
/// such a SYN reached a backend a reload had removed, and was refused). The established flow's
/// own packets stay on the drained backend.
#[test]
fn a_syn_reusing_a_drained_backends_flow_is_a_new_connection() {
    let mut bed = bed(&config());
    let first = syn(42500);
    let (_, out) = bed.run(&first.bytes(), bed.xc);
    let (pinned, _) = destination(&out);
    let pinned_id = id_of(pinned);
    assert!(pinned_id < 2);
    bed.writer
        .drain("web", &format!("{pinned}:8080"), true)
        .unwrap();
    let ack = Pkt {
        l4: L4::Tcp { syn: false },
        ..first.clone()
    };
    let (_, out) = bed.run(&ack.bytes(), bed.xc);
    assert_eq!(
        destination(&out).0,
        pinned,
        "the established flow left its drained backend"
    );
    let now = assert_reselected(
        &mut bed,
        &first,
        pinned_id,
        "the reused port's SYN followed the old entry to the drained backend",
    );
    // The new connection's own packets follow it.
    let (_, out) = bed.run(&ack.bytes(), bed.xc);
    assert_eq!(destination(&out).0, now);
}

#[test]
fn the_backup_tier_takes_new_flows_when_the_primaries_are_down() {
    let mut bed = bed(&config());
    set(&mut bed, 0, false);
    set(&mut bed, 1, false);
    for sport in 45000..45020 {
        let (action, out) = bed.run(&syn(sport).bytes(), bed.xc);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(destination(&out).0.to_string(), WEB[2]);
    }
}

#[test]
fn on_all_down_drop_is_counted() {
    let mut bed = bed(&config());
    for id in 0..3 {
        set(&mut bed, id, false);
    }
    let p = syn(46000);
    let (action, out) = bed.run(&p.bytes(), bed.xc);
    assert_eq!(action, XDP_DROP);
    assert_bytes("dropped", &out, &p.bytes());
    assert_eq!(bed.counter(Counter::DropNoBackend), 1);
}

/// Checks a RST built by the program against an independent parse and recomputation.
fn assert_valid_rst(out: &[u8], from: IpAddr, to: IpAddr, sport: u16, seq: u32, ack: Option<u32>) {
    assert_eq!(&out[0..6], &CLIENT_MAC, "sent back to the client's MAC");
    assert_eq!(&out[6..12], &XC_MAC);
    let p = SlicedPacket::from_ethernet(out).expect("the RST parses");
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        panic!("not TCP")
    };
    let payload = tcp.payload();
    let tcp_header = tcp.to_header();
    match p.net.unwrap() {
        etherparse::NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            assert_eq!(IpAddr::from(h.source), from);
            assert_eq!(IpAddr::from(h.destination), to);
            assert_eq!(h.time_to_live, 64);
            assert_eq!(out.len(), 14 + 20 + 20);
            let want = tcp_header.calc_checksum_ipv4(&h, payload).unwrap();
            assert_eq!(tcp.checksum(), want, "TCP checksum");
        }
        etherparse::NetSlice::Ipv6(ip) => {
            let h = ip.header().to_header();
            assert_eq!(IpAddr::from(h.source), from);
            assert_eq!(IpAddr::from(h.destination), to);
            assert_eq!(h.payload_length, 20);
            assert_eq!(out.len(), 14 + 40 + 20);
            let want = tcp_header.calc_checksum_ipv6(&h, payload).unwrap();
            assert_eq!(tcp.checksum(), want, "TCP checksum");
        }
        _ => panic!("not IP"),
    }
    assert!(tcp.rst(), "RST flag");
    assert!(!tcp.syn() && !tcp.fin());
    assert_eq!(tcp.source_port(), sport);
    assert_eq!(tcp.destination_port(), 40100);
    assert_eq!(tcp.sequence_number(), seq);
    assert_eq!(tcp.ack(), ack.is_some());
    assert_eq!(tcp.acknowledgment_number(), ack.unwrap_or(0));
    assert!(payload.is_empty());
}

#[test]
fn on_all_down_reject_answers_with_a_valid_rst() {
    let mut bed = bed(&config());
    set(&mut bed, REJECT4, false);
    set(&mut bed, REJECT6, false);
    // A SYN with 10 bytes of data: RST+ACK acknowledging SYN + data.
    let s = Pkt::to_vip(CLIENT4, VIP4, 40100, 81, L4::Tcp { syn: true });
    let (action, out) = bed.run(&s.bytes(), bed.xc);
    assert_eq!(action, XDP_TX);
    assert_valid_rst(&out, s.dst, s.src, 81, 0, Some(1000 + 10 + 1));
    // An ACK: RST with its acknowledgement as our sequence, no ACK flag (RFC 793).
    let a = Pkt::to_vip(CLIENT4, VIP4, 40100, 81, L4::Tcp { syn: false });
    let (action, out) = bed.run(&a.bytes(), bed.xc);
    assert_eq!(action, XDP_TX);
    assert_valid_rst(&out, a.dst, a.src, 81, 1, None);
    // IPv6.
    let s6 = Pkt::to_vip(CLIENT6, VIP6, 40100, 81, L4::Tcp { syn: true });
    let (action, out) = bed.run(&s6.bytes(), bed.xc);
    assert_eq!(action, XDP_TX);
    assert_valid_rst(&out, s6.dst, s6.src, 81, 0, Some(1011));
    // IPv4 options (a record route, say) are not echoed: the RST's header is the bare 20 bytes.
    let o = Pkt {
        ip_options: true,
        ..Pkt::to_vip(CLIENT4, VIP4, 40100, 81, L4::Tcp { syn: true })
    };
    let (action, out) = bed.run(&o.bytes(), bed.xc);
    assert_eq!(action, XDP_TX);
    assert_valid_rst(&out, o.dst, o.src, 81, 0, Some(1011));
    assert_eq!(bed.counter(Counter::RejectRst), 4);
    // A RST is never answered.
    let r = Pkt::to_vip(CLIENT4, VIP4, 40100, 81, L4::Rst);
    assert_eq!(bed.run(&r.bytes(), bed.xc).0, XDP_DROP);
    assert_eq!(bed.counter(Counter::DropReject), 1);
}

fn events(bed: &mut Bed) -> Vec<(u32, EventKind)> {
    let mut ring = bed.dp().take_events().unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let e = unsafe { (item.as_ptr() as *const BackendEvent).read_unaligned() };
        out.push((e.backend, EventKind::from_u32(e.kind).unwrap()));
    }
    out
}

fn reply(from: IpAddr, sport: u16, l4: L4) -> Pkt {
    Pkt {
        eth_src: backend_mac(from),
        eth_dst: XB_MAC,
        vlan: None,
        src: from,
        dst: CLIENT4.parse().unwrap(),
        sport: 8080,
        dport: sport,
        ttl: 64,
        ip_options: false,
        l4,
        payload: Vec::new(),
    }
}

#[test]
fn passive_detection_reports_rst_icmp_and_syn_timeout() {
    let mut bed = bed(&config());
    // A RST answering a SYN.
    let (_, out) = bed.run(&syn(47000).bytes(), bed.xc);
    let (b1, _) = destination(&out);
    let (action, _) = bed.run(&reply(b1, 47000, L4::Rst).bytes(), bed.xb);
    assert_eq!(action, XDP_REDIRECT, "the RST still reaches the client");
    // A RST after a SYN-ACK is an ordinary close: no event.
    let (_, out) = bed.run(&syn(47001).bytes(), bed.xc);
    let (b2, _) = destination(&out);
    bed.run(&reply(b2, 47001, L4::SynAck).bytes(), bed.xb);
    bed.run(&reply(b2, 47001, L4::Rst).bytes(), bed.xb);

    // An ICMP port unreachable quoting a translated packet.
    let (_, out) = bed.run(&syn(47002).bytes(), bed.xc);
    let (b3, _) = destination(&out);
    let IpAddr::V4(b3v4) = b3 else { unreachable!() };
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(backend_mac(b3), XB_MAC)
        .ipv4(b3v4.octets(), [10, 0, 1, 2], 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut icmp, &out[14..14 + 28])
        .unwrap();
    let (action, _) = bed.run(&icmp, bed.xb);
    assert_eq!(
        action, XDP_REDIRECT,
        "the ICMP goes on to the client, translated"
    );

    // A SYN retransmitted after the service's syn_timeout, never answered.
    let (_, out) = bed.run(&syn(47003).bytes(), bed.xc);
    let (b4, _) = destination(&out);
    std::thread::sleep(past_syn_timeout());
    bed.run(&syn(47003).bytes(), bed.xc);
    // An answered one retransmitting is no event.
    let (_, out) = bed.run(&syn(47004).bytes(), bed.xc);
    let (b5, _) = destination(&out);
    bed.run(&reply(b5, 47004, L4::SynAck).bytes(), bed.xb);
    std::thread::sleep(past_syn_timeout());
    bed.run(&syn(47004).bytes(), bed.xc);

    // A new connection reusing an answered flow's 5-tuple (a recycled client port) is refused:
    // that counts, although the old connection on the tuple saw a SYN-ACK.
    bed.run(&syn(47004).bytes(), bed.xc);
    bed.run(&reply(b5, 47004, L4::Rst).bytes(), bed.xb);

    assert_eq!(
        events(&mut bed),
        vec![
            (id_of(b1), EventKind::RstToSyn),
            (id_of(b3), EventKind::IcmpUnreachable),
            (id_of(b4), EventKind::SynTimeout),
            (id_of(b5), EventKind::RstToSyn),
        ]
    );
    assert_eq!(bed.counter(Counter::EventSent), 4);
}

/// Only what only the backend's side can say is evidence: an ICMP unreachable whose outer source
/// is the backend itself, with a code that means nothing listens. A client forging one about its
/// own flow, a router's message, and path-MTU messages (frag-needed) report nothing; they still
/// go on to the stack untouched, and are counted.
#[test]
fn forged_and_path_mtu_icmp_are_not_evidence() {
    let mut bed = bed(&config());
    let (_, out) = bed.run(&syn(47100).bytes(), bed.xc);
    let (b, _) = destination(&out);
    let IpAddr::V4(bv4) = b else { unreachable!() };
    let quoted = &out[14..14 + 28];
    let icmp = |eth_src: [u8; 6], src: [u8; 4], dst: [u8; 4], code: DestUnreachableHeader| {
        let mut p = Vec::new();
        PacketBuilder::ethernet2(eth_src, XB_MAC)
            .ipv4(src, dst, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(code))
            .write(&mut p, quoted)
            .unwrap();
        p
    };
    let client = [10, 0, 1, 2];
    let vip = [10, 0, 0, 10];
    let cases = [
        (
            "a client forging a port unreachable about its own flow",
            icmp([2; 6], client, vip, DestUnreachableHeader::Port),
            bed.xc,
        ),
        (
            "a router's host unreachable",
            icmp(
                backend_mac(b),
                [10, 0, 11, 254],
                client,
                DestUnreachableHeader::Host,
            ),
            bed.xb,
        ),
        (
            "the backend's frag-needed",
            icmp(
                backend_mac(b),
                bv4.octets(),
                client,
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ),
            bed.xb,
        ),
    ];
    for (i, (what, packet, ifindex)) in cases.iter().enumerate() {
        let (action, out) = bed.run(packet, *ifindex);
        if i == 0 {
            assert_eq!(
                (action, &out),
                (XDP_PASS, packet),
                "{what}: passed untouched"
            );
        } else {
            assert_eq!(action, XDP_REDIRECT, "{what}: translated on to the client");
        }
    }
    assert_eq!(bed.counter(Counter::IcmpNotEvidence), 3);
    // The backend's own port unreachable is evidence.
    let real = icmp(
        backend_mac(b),
        bv4.octets(),
        client,
        DestUnreachableHeader::Port,
    );
    bed.run(&real, bed.xb);
    assert_eq!(
        events(&mut bed),
        vec![(id_of(b), EventKind::IcmpUnreachable)]
    );
}

/// An update is about one backend and one task: after a reload gives an id to another backend,
/// or replaces the id's task, what the old task decided is dropped (and counted), so a backend
/// that must pass its own first check is never marked up by another's.
#[test]
fn stale_health_updates_are_dropped() {
    let text = r#"
[dataplane]
interfaces = ["lo"]
[[service]]
name = "web"
vip = "10.0.0.10:80"
table_size = 101
health = { kind = "tcp" }
wait_for_first_check = true
[[service.backend]]
address = "10.0.11.2:8080"
"#;
    let config = understudy::config::Config::parse("t.toml".as_ref(), text).unwrap();
    let p = understudy::plan::plan(&config);
    let dp = understudy::dataplane::Dataplane::load().unwrap();
    let epochs = std::sync::Arc::new(understudy::health::Epochs::default());
    let mut writer = understudy::writer::Writer::new(dp, p.clone()).with_epochs(epochs.clone());
    writer.install().unwrap();
    let old_task = epochs.start(0);
    let new_task = epochs.start(0);
    let generation = writer.generation_of(0).unwrap();
    let up = |generation, task| Update {
        backend: 0,
        generation,
        task,
        up: true,
        reason: "check passed".into(),
        decided: Instant::now(),
    };
    let healthy = |w: &understudy::writer::Writer| w.snapshot().services[0].backends[0].healthy;
    assert!(!healthy(&writer), "waits for its first check");
    writer.apply(&[up(generation, old_task)]).unwrap();
    assert!(!healthy(&writer), "a replaced task's verdict is dropped");
    writer.apply(&[up(generation + 1, new_task)]).unwrap();
    assert!(
        !healthy(&writer),
        "a verdict about another generation is dropped"
    );
    assert_eq!(writer.stale_updates(), 2);
    writer.apply(&[up(generation, new_task)]).unwrap();
    assert!(healthy(&writer), "the current task's verdict applies");
}

/// A SYN timeout is evidence only when the backend answered no other SYN since the flow began:
/// one that answers others is listening, and the lost SYN (or SYN-ACK) is the path's or the
/// client's doing, as under load.
#[test]
fn a_syn_timeout_is_no_evidence_while_the_backend_answers_other_syns() {
    let mut bed = bed(&config());
    let (_, out) = bed.run(&syn(47200).bytes(), bed.xc);
    let (b, _) = destination(&out);
    // Another flow to the same backend, answered.
    let other = (47201..48000)
        .find(|&port| {
            let (_, out) = bed.run(&syn(port).bytes(), bed.xc);
            destination(&out).0 == b
        })
        .expect("a second flow to the same backend");
    bed.run(&reply(b, other, L4::SynAck).bytes(), bed.xb);
    std::thread::sleep(past_syn_timeout());
    bed.run(&syn(47200).bytes(), bed.xc);
    assert_eq!(bed.counter(Counter::SynTimeoutNotEvidence), 1);
    assert_eq!(
        events(&mut bed),
        vec![],
        "no event against a listening backend"
    );
}

/// `quoted` (an IPv4 header and at least 8 bytes of TCP or UDP) with its source or destination
/// address and port replaced and its IPv4 checksum recomputed: what the program must leave in a
/// translated ICMP error.
fn requote(quoted: &[u8], src: Option<([u8; 4], u16)>, dst: Option<([u8; 4], u16)>) -> Vec<u8> {
    let (mut ip, rest) = etherparse::Ipv4Header::from_slice(quoted).unwrap();
    let mut l4 = rest.to_vec();
    if let Some((addr, port)) = src {
        ip.source = addr;
        l4[0..2].copy_from_slice(&port.to_be_bytes());
    }
    if let Some((addr, port)) = dst {
        ip.destination = addr;
        l4[2..4].copy_from_slice(&port.to_be_bytes());
    }
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = ip.to_bytes().to_vec();
    out.extend_from_slice(&l4);
    out
}

/// ICMP errors about translated flows are translated both ways, with every checksum whole (the
/// expected packets are built by etherparse): the backend's port unreachable reaches the client
/// from the VIP, quoting the client's own packet to the VIP; a router's frag-needed about a
/// reply, addressed to the VIP, reaches the backend quoting the backend's own packet.
#[test]
fn icmp_errors_are_translated_both_ways() {
    let mut bed = bed(&config());
    let client = [10, 0, 1, 2];
    let vip = [10, 0, 0, 10];
    let s = syn(47300);
    let (_, out) = bed.run(&s.bytes(), bed.xc);
    let (b, _) = destination(&out);
    let IpAddr::V4(bv4) = b else { unreachable!() };

    // The backend's port unreachable about the SYN it got.
    let mut from_backend = Vec::new();
    PacketBuilder::ethernet2(backend_mac(b), XB_MAC)
        .ipv4(bv4.octets(), client, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut from_backend, &out[14..14 + 28])
        .unwrap();
    let (action, got) = bed.run(&from_backend, bed.xb);
    assert_eq!(action, XDP_REDIRECT, "on to the client");
    let mut want = Vec::new();
    PacketBuilder::ethernet2(XC_MAC, CLIENT_MAC)
        .ipv4(vip, client, 63)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(
            &mut want,
            &requote(&out[14..14 + 28], None, Some((vip, 80))),
        )
        .unwrap();
    assert_bytes("to the client", &got, &want);

    // A router on the client's path cannot forward a reply: frag-needed, to the VIP.
    let r = reply(b, 47300, L4::Tcp { syn: false });
    let (_, translated) = bed.run(&r.bytes(), bed.xb);
    let router = [10, 0, 1, 1];
    let mtu = DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 };
    let mut from_router = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, XC_MAC)
        .ipv4(router, vip, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(mtu.clone()))
        .write(&mut from_router, &translated[14..14 + 28])
        .unwrap();
    let (action, got) = bed.run(&from_router, bed.xc);
    assert_eq!(action, XDP_REDIRECT, "on to the backend");
    let mut want = Vec::new();
    PacketBuilder::ethernet2(XB_MAC, backend_mac(b))
        .ipv4(router, bv4.octets(), 63)
        .icmpv4(Icmpv4Type::DestinationUnreachable(mtu))
        .write(
            &mut want,
            &requote(&translated[14..14 + 28], Some((bv4.octets(), 8080)), None),
        )
        .unwrap();
    assert_bytes("to the backend", &got, &want);
    assert_eq!(bed.counter(Counter::IcmpToClient), 1);
    assert_eq!(bed.counter(Counter::IcmpToBackend), 1);
}
