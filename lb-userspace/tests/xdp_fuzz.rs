//! A packet fuzzer through `BPF_PROG_TEST_RUN`, checked against a reference model of the
//! program's decision written here, independently of the kernel code: for every packet, pass it
//! byte for byte, or rewrite it to exactly the bytes the model computes. Packets are generated
//! (TCP and UDP to every VIP, replies of the flows seen, other traffic, over IPv4 and IPv6, with
//! VLAN tags, IPv4 options and low TTLs) and then mutated: truncated, their lengths lied about,
//! bytes flipped (which makes fragments, ICMP, unknown protocols, bad versions and headers). The
//! model keeps the flow table the program builds (which backend each flow got) and the
//! fragments it translated. Any disagreement fails with the packet and the seed;
//! `UNDERSTUDY_FUZZ_SEED=N` replays, `UNDERSTUDY_FUZZ_PACKETS=N` sets the count (default 100,000).

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::Counter;
use lb_common::checksum::{replace_addr, replace_u16, replace_u32, udp_fixup};
use support::*;

type Tuple = (IpAddr, u16, IpAddr, u16, u8);
/// A VIP (address, port, protocol) and its backends.
type ServiceEntry = ((IpAddr, u16, u8), Vec<(IpAddr, u16)>);

/// What the model knows: the services, the flows the program created, the fragments it
/// translated.
struct Model {
    services: Vec<ServiceEntry>,
    /// Client tuple to backend.
    flows: HashMap<Tuple, (IpAddr, u16)>,
    /// Backend's reply tuple to the VIP it must appear from. Ordered: the generator picks
    /// replies by index, so a seed replays only if the iteration order is the seed's alone.
    replies: BTreeMap<Tuple, (IpAddr, u16)>,
    /// (src, dst, id, proto) to (rewrite the destination?, the address).
    frags: HashMap<(IpAddr, IpAddr, u32, u8), (bool, IpAddr)>,
}

/// The headers the model found.
struct Headers {
    vlan: bool,
    l3: usize,
    l4: usize,
    v6: bool,
    ttl: u8,
    /// The IP length the header claims (IPv4 total length; IPv6 payload + 40).
    ip_len: usize,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// (id, first).
    frag: Option<(u32, bool)>,
    sport: u16,
    dport: u16,
}

/// The model's parser; `None` means the program passes the packet untouched.
fn parse(b: &[u8]) -> Option<Headers> {
    let mut et = u16::from_be_bytes([*b.get(12)?, *b.get(13)?]);
    let mut l3 = 14;
    let mut vlan = false;
    if et == 0x8100 || et == 0x88a8 {
        et = u16::from_be_bytes([*b.get(16)?, *b.get(17)?]);
        l3 = 18;
        vlan = true;
        if et == 0x8100 || et == 0x88a8 {
            return None;
        }
    }
    let mut frag = None;
    let (v6, ttl, ip_len, src, dst, proto, l4) = match et {
        0x0800 => {
            let h = b.get(l3..l3 + 20)?;
            let ihl = (h[0] & 0x0f) as usize * 4;
            if h[0] >> 4 != 4 || ihl < 20 {
                return None;
            }
            let more = h[6] & 0x20 != 0;
            let offset = (h[6] & 0x1f) != 0 || h[7] != 0;
            if more || offset {
                frag = Some((u16::from_be_bytes([h[4], h[5]]) as u32, !offset));
            }
            let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]).into();
            let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]).into();
            (
                false,
                h[8],
                u16::from_be_bytes([h[2], h[3]]) as usize,
                src,
                dst,
                h[9],
                l3 + ihl,
            )
        }
        0x86dd => {
            let h = b.get(l3..l3 + 40)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let a = |o: usize| -> IpAddr {
                Ipv6Addr::from(<[u8; 16]>::try_from(&h[o..o + 16]).unwrap()).into()
            };
            let mut next = h[6];
            let mut off = l3 + 40;
            for _ in 0..4 {
                if matches!(next, 0 | 43 | 60) {
                    let e = b.get(off..off + 4)?;
                    if next == 43 && e[3] != 0 {
                        return None;
                    }
                    next = e[0];
                    off += (e[1] as usize + 1) * 8;
                } else {
                    break;
                }
            }
            if next == 44 {
                let f = b.get(off..off + 8)?;
                next = f[0];
                let offset = u16::from_be_bytes([f[2], f[3]]) >> 3;
                frag = Some((u32::from_be_bytes([f[4], f[5], f[6], f[7]]), offset == 0));
                off += 8;
            }
            let len = u16::from_be_bytes([h[4], h[5]]) as usize + 40;
            (true, h[7], len, a(8), a(24), next, off)
        }
        _ => return None,
    };
    let mut h = Headers {
        vlan,
        l3,
        l4,
        v6,
        ttl,
        ip_len,
        src,
        dst,
        proto,
        frag,
        sport: 0,
        dport: 0,
    };
    if frag.is_some_and(|(_, first)| !first) {
        return (proto == 6 || proto == 17).then_some(h);
    }
    match proto {
        6 => {
            let t = b.get(l4..l4 + 20)?;
            h.sport = u16::from_be_bytes([t[0], t[1]]);
            h.dport = u16::from_be_bytes([t[2], t[3]]);
        }
        17 => {
            let u = b.get(l4..l4 + 8)?;
            if v6 && u[6] == 0 && u[7] == 0 {
                return None;
            }
            h.sport = u16::from_be_bytes([u[0], u[1]]);
            h.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        // ICMP: passed untouched unless it quotes a flow, which random bytes never do.
        _ => return None,
    }
    Some(h)
}

fn words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            core::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}

fn put_addr(b: &mut [u8], at: usize, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => b[at..at + 4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b[at..at + 16].copy_from_slice(&v6.octets()),
    }
}

/// What the program must do with a packet: its action and output bytes.
fn expect(
    m: &mut Model,
    b: &[u8],
    ingress_xc: bool,
    bed: &Bed,
    chosen: Option<(IpAddr, u16)>,
    translated: bool,
) -> Expectation {
    let Some(h) = parse(b) else {
        return Expectation::Pass(b.to_vec());
    };
    let nwords = if h.v6 { 4 } else { 1 };
    let (addr_src_at, addr_dst_at) = if h.v6 {
        (h.l3 + 8, h.l3 + 24)
    } else {
        (h.l3 + 12, h.l3 + 16)
    };
    // A later fragment: as its first was.
    if let Some((id, false)) = h.frag {
        let Some(&(to_dst, addr)) = m.frags.get(&(h.src, h.dst, id, h.proto)) else {
            return Expectation::Pass(b.to_vec());
        };
        if h.ttl <= 1 {
            return Expectation::Pass(b.to_vec());
        }
        let mut out = b.to_vec();
        let (at, old) = if to_dst {
            (addr_dst_at, h.dst)
        } else {
            (addr_src_at, h.src)
        };
        put_addr(&mut out, at, addr);
        if !h.v6 {
            let c = ne16(&out, h.l3 + 10);
            put16(
                &mut out,
                h.l3 + 10,
                replace_u32(c, words(old)[0], words(addr)[0]),
            );
        }
        let (nsrc, ndst) = if to_dst { (h.src, addr) } else { (addr, h.dst) };
        return forward(out, &h, nsrc, ndst, ingress_xc, bed);
    }
    let service = m
        .services
        .iter()
        .find(|((vip, port, proto), _)| *vip == h.dst && *port == h.dport && *proto == h.proto)
        .cloned();
    let tuple = (h.src, h.sport, h.dst, h.dport, h.proto);
    let (to_dst, addr, port) = if let Some((_, backends)) = service {
        if h.ttl <= 1 {
            return Expectation::Pass(b.to_vec());
        }
        let backend = match m.flows.get(&tuple) {
            Some(&b) => b,
            None => {
                // New: whichever backend the program chose, if it is one of the service's.
                let Some(c) = chosen.filter(|c| backends.contains(c)) else {
                    return Expectation::NewFlowTo(backends);
                };
                m.flows.insert(tuple, c);
                m.replies
                    .insert((c.0, c.1, h.src, h.sport, h.proto), (h.dst, h.dport));
                c
            }
        };
        (true, backend.0, backend.1)
    } else if let Some((vip, vport)) = m.replies.get(&tuple).copied().or_else(|| {
        // No tracked flow: a packet from a backend's address and port is still its service's
        // reply (`REVERSE`).
        m.services
            .iter()
            .find(|((_, _, proto), backends)| {
                *proto == h.proto && backends.contains(&(h.src, h.sport))
            })
            .map(|((vip, port, _), _)| (*vip, *port))
    }) {
        // The FIB is asked before a reply is rewritten: to a destination it does not forward to
        // (this host, no route) the reply passes untouched. An odd destination is the kernel's
        // to decide (an unresolved neighbour in a known subnet is translated and passed), so the
        // model follows the program's choice, as for a new flow's backend: untouched, or
        // translated exactly, and then a first fragment's later ones must be translated alike.
        let (clients, backends) = neighbours();
        if !clients.contains(&h.dst) && !backends.contains(&h.dst) && !translated {
            return Expectation::Pass(b.to_vec());
        }
        if h.ttl <= 1 {
            return Expectation::Pass(b.to_vec());
        }
        (false, vip, vport)
    } else {
        return Expectation::Pass(b.to_vec());
    };
    // The rewrite: one address and one port, with the transport and IPv4 checksums.
    let mut out = b.to_vec();
    let (old_addr, old_port) = if to_dst {
        (h.dst, h.dport)
    } else {
        (h.src, h.sport)
    };
    let check_at = h.l4 + if h.proto == 6 { 16 } else { 6 };
    let old_check = ne16(&out, check_at);
    let mut check = replace_addr(old_check, &words(old_addr), &words(addr), nwords);
    check = replace_u16(check, old_port.to_be(), port.to_be());
    if h.proto == 17 {
        check = udp_fixup(old_check, check);
    }
    put16(&mut out, check_at, check);
    put16(&mut out, h.l4 + if to_dst { 2 } else { 0 }, port.to_be());
    put_addr(
        &mut out,
        if to_dst { addr_dst_at } else { addr_src_at },
        addr,
    );
    if !h.v6 {
        let c = ne16(&out, h.l3 + 10);
        put16(
            &mut out,
            h.l3 + 10,
            replace_u32(c, words(old_addr)[0], words(addr)[0]),
        );
    }
    if let Some((id, true)) = h.frag {
        m.frags.insert((h.src, h.dst, id, h.proto), (to_dst, addr));
    }
    let (nsrc, ndst) = if to_dst { (h.src, addr) } else { (addr, h.dst) };
    forward(out, &h, nsrc, ndst, ingress_xc, bed)
}

/// The namespace's neighbours: the clients, and the backends.
fn neighbours() -> ([IpAddr; 2], [IpAddr; 5]) {
    let clients = [CLIENT4, CLIENT6].map(|a| a.parse().unwrap());
    let backends = [
        "10.0.11.2",
        "10.0.11.3",
        "10.0.11.4",
        "fd00:11::2",
        "fd00:11::3",
    ]
    .map(|a| a.parse().unwrap());
    (clients, backends)
}

/// The forwarding step: the stack takes VLAN-tagged and over-MTU packets, and packets to
/// neighbours the namespace does not know; the rest leave with TTL - 1 and next-hop MACs.
fn forward(
    mut out: Vec<u8>,
    h: &Headers,
    src: IpAddr,
    dst: IpAddr,
    ingress_xc: bool,
    _bed: &Bed,
) -> Expectation {
    if h.vlan || h.ip_len > 1500 {
        return Expectation::Pass(out);
    }
    let translated = out.clone();
    let (clients, backends) = neighbours();
    let (egress_xc, smac, dmac) = if clients.contains(&dst) {
        (true, XC_MAC, CLIENT_MAC)
    } else if backends.contains(&dst) {
        (false, XB_MAC, backend_mac(dst))
    } else {
        // A neighbour the namespace does not know: the kernel resolves it, so the translated
        // packet goes to the stack as it is.
        return Expectation::Pass(translated);
    };
    if h.v6 {
        out[h.l3 + 7] -= 1;
    } else {
        let old = ne16(&out, h.l3 + 8);
        out[h.l3 + 8] -= 1;
        let new = ne16(&out, h.l3 + 8);
        let c = ne16(&out, h.l3 + 10);
        put16(&mut out, h.l3 + 10, replace_u16(c, old, new));
    }
    out[0..6].copy_from_slice(&dmac);
    out[6..12].copy_from_slice(&smac);
    // The FIB's view of an odd source (multicast, another subnet's) is the kernel's to decide:
    // such a packet may also go to the stack, translated.
    let usual: [IpAddr; 9] = [
        CLIENT4,
        CLIENT6,
        VIP4,
        VIP6,
        "10.0.11.2",
        "10.0.11.3",
        "10.0.11.4",
        "fd00:11::2",
        "fd00:11::3",
    ]
    .map(|a| a.parse().unwrap());
    Expectation::Sent {
        action: if egress_xc == ingress_xc {
            XDP_TX
        } else {
            XDP_REDIRECT
        },
        bytes: out,
        or_pass: (!usual.contains(&src)).then_some(translated),
    }
}

enum Expectation {
    Pass(Vec<u8>),
    Sent {
        action: u32,
        bytes: Vec<u8>,
        /// Also acceptable: a pass of these bytes.
        or_pass: Option<Vec<u8>>,
    },
    /// A new flow: the program's choice decides, among these.
    NewFlowTo(Vec<(IpAddr, u16)>),
}

fn generate(rng: &mut fastrand::Rng, m: &Model) -> (Vec<u8>, bool) {
    let payload: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
    let l4 = |rng: &mut fastrand::Rng, udp: bool| {
        if udp {
            L4::Udp
        } else {
            match rng.u8(..4) {
                0 => L4::Tcp { syn: true },
                1 => L4::Tcp { syn: false },
                2 => L4::Rst,
                _ => L4::SynAck,
            }
        }
    };
    let mut pkt = match rng.u8(..10) {
        // A reply of a flow the program created.
        0..=2 if !m.replies.is_empty() => {
            let i = rng.usize(..m.replies.len());
            let (&(src, sport, dst, dport, proto), _) = m.replies.iter().nth(i).unwrap();
            let mut p = Pkt::to_vip(
                &src.to_string(),
                &dst.to_string(),
                sport,
                dport,
                l4(rng, proto == 17),
            );
            p.eth_src = backend_mac(src);
            p.eth_dst = XB_MAC;
            p
        }
        // Not for a VIP.
        3 => {
            let v6 = rng.bool();
            let (s, d) = if v6 {
                (CLIENT6, "fd00:9::9")
            } else {
                (CLIENT4, "10.9.9.9")
            };
            let (sport, dport, udp) = (rng.u16(1..), rng.u16(1..), rng.bool());
            Pkt::to_vip(s, d, sport, dport, l4(rng, udp))
        }
        // To a VIP: a known flow again, or a new one.
        _ => {
            let v6 = rng.bool();
            let udp = rng.u8(..4) == 0;
            let port = if udp { 53 } else { 80 };
            let (c, v) = if v6 { (CLIENT6, VIP6) } else { (CLIENT4, VIP4) };
            Pkt::to_vip(c, v, 30000 + rng.u16(..200), port, l4(rng, udp))
        }
    };
    pkt.payload = payload;
    pkt.ttl = match rng.u8(..10) {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => 64,
    };
    pkt.ip_options = !pkt.src.is_ipv6() && rng.u8(..6) == 0;
    if rng.u8(..8) == 0 {
        pkt.vlan = Some(rng.u16(1..4000));
    }
    let from_backend = pkt.eth_dst == XB_MAC;
    let mut bytes = pkt.bytes();
    // Mutations.
    match rng.u8(..20) {
        0..=7 => {}
        8..=10 => {
            // Frames shorter than an Ethernet header never reach XDP (test_run refuses them).
            let n = rng.usize(14..bytes.len());
            bytes.truncate(n);
        }
        11..=12 => {
            // A lying length field.
            let l3 = if pkt.vlan.is_some() { 18 } else { 14 };
            let at = l3 + if pkt.src.is_ipv6() { 4 } else { 2 };
            let v = rng.u16(..);
            if bytes.len() >= at + 2 {
                bytes[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        _ => {
            for _ in 0..rng.usize(1..=3) {
                let at = rng.usize(12..bytes.len().clamp(13, 90));
                if at < bytes.len() {
                    bytes[at] = if rng.bool() {
                        rng.u8(..)
                    } else {
                        bytes[at] ^ (1 << rng.u8(..8))
                    };
                }
            }
        }
    }
    (bytes, !from_backend)
}

#[test]
fn the_program_agrees_with_the_model_on_generated_and_mutated_packets() {
    let seed = std::env::var("UNDERSTUDY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let count: usize = std::env::var("UNDERSTUDY_FUZZ_PACKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    println!("packet fuzz: seed {seed} (replay with UNDERSTUDY_FUZZ_SEED={seed}), {count} packets");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bed = support::bed(CONFIG);
    let config = understudy::config::Config::parse("fuzz.toml".as_ref(), CONFIG).unwrap();
    let mut m = Model {
        services: config
            .services
            .iter()
            .map(|s| {
                let proto = if s.protocol == understudy::config::Protocol::Udp {
                    17
                } else {
                    6
                };
                (
                    (s.vip.ip(), s.vip.port(), proto),
                    s.backends
                        .iter()
                        .map(|b| (b.address.ip(), b.address.port()))
                        .collect(),
                )
            })
            .collect(),
        flows: HashMap::new(),
        replies: BTreeMap::new(),
        frags: HashMap::new(),
    };
    let (mut passed, mut rewritten) = (0usize, 0usize);
    // Actions as the program returned them, to hold its counters to.
    let (mut tx, mut redirected) = (0u64, 0u64);
    for n in 0..count {
        let (packet, from_client) = generate(&mut rng, &m);
        let ifindex = if from_client { bed.xc } else { bed.xb };
        let (action, out) = bed.run(&packet, ifindex);
        tx += u64::from(action == XDP_TX);
        redirected += u64::from(action == XDP_REDIRECT);
        let out = out[..out.len().min(packet.len() + 64)].to_vec();
        // The program's choice for a new flow, read from its output (checked below).
        let chosen = (out != packet)
            .then(|| parse(&out))
            .flatten()
            .map(|h| (h.dst, h.dport));
        let fail = |why: String| -> ! {
            panic!("seed {seed}, packet {n}: {why}\n in  {packet:02x?}\n out {out:02x?}")
        };
        match expect(&mut m, &packet, from_client, &bed, chosen, out != packet) {
            Expectation::Pass(want) => {
                if action != XDP_PASS || out != want {
                    fail(format!(
                        "expected a pass of {want:02x?}, got action {action}"
                    ));
                }
                passed += 1;
            }
            Expectation::Sent {
                action: want_action,
                bytes,
                or_pass,
            } => {
                let passed_instead = action == XDP_PASS && or_pass.as_ref() == Some(&out);
                if !passed_instead && (action != want_action || out != bytes) {
                    fail(format!(
                        "expected action {want_action} with {bytes:02x?}, got action {action}"
                    ));
                }
                rewritten += 1;
            }
            Expectation::NewFlowTo(backends) => {
                fail(format!(
                    "a new flow went to {chosen:?}, not one of {backends:?}"
                ));
            }
        }
    }
    println!(
        "packet fuzz: {count} packets: {passed} passed, {rewritten} rewritten; {} flows",
        m.flows.len()
    );
    assert!(
        rewritten > count / 10,
        "enough packets were translated to mean something"
    );
    // Nothing is sent uncounted: every XDP_TX is a forward or a RST, every redirect counted.
    let counters = bed.dp().counters().unwrap();
    assert_eq!(
        counters.get(Counter::Redirect),
        redirected,
        "seed {seed}: redirects"
    );
    assert_eq!(
        bed.counter(Counter::Tx) + bed.counter(Counter::RejectRst),
        tx,
        "seed {seed}: transmits"
    );
}
