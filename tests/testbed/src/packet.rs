//! Packets for the kernel `test_run` tests: described by their fields, built by etherparse with
//! every checksum computed in full, and the addresses and config the tests' namespace knows.

use std::net::IpAddr;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6Header,
    PacketBuilder, SlicedPacket, TransportSlice, VlanId,
};

pub use crate::fib::{CLIENT_MAC, XB_MAC, XC_MAC, backend_mac};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const CLIENT4: &str = "10.0.1.2";
pub const CLIENT6: &str = "fd00:1::2";
pub const VIP4: &str = "10.0.0.10";
pub const VIP6: &str = "fd00::10";

/// The services most kernel tests run against: TCP and UDP VIPs over IPv4 and IPv6, with
/// backends the namespace's neighbour table knows.
pub const CONFIG: &str = r#"
dataplane = { interfaces = ["xc", "xb"] }

# Backends as inline tables: the same config as [[service.backend]] sections, denser.
[[service]]
name = "web"
vip = "10.0.0.10:80"
table_size = 307
backend = [{ address = "10.0.11.2:8080" }, { address = "10.0.11.3:8080" }, { address = "10.0.11.4:8080" }]

[[service]]
name = "dns"
vip = "10.0.0.10:53"
protocol = "udp"
backend = [{ address = "10.0.11.2:5353" }]

[[service]]
name = "web6"
vip = "[fd00::10]:80"
table_size = 211
backend = [{ address = "[fd00:11::2]:8080" }, { address = "[fd00:11::3]:8080" }]

[[service]]
name = "dns6"
vip = "[fd00::10]:53"
protocol = "udp"
backend = [{ address = "[fd00:11::2]:5353" }]
"#;

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { syn: bool },
    SynAck,
    Rst,
    Udp,
}

/// A packet described by its fields, built by etherparse with every checksum computed in full.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub ip_options: bool,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn to_vip(src: &str, dst: &str, sport: u16, dport: u16, l4: L4) -> Pkt {
        Pkt {
            eth_src: CLIENT_MAC,
            eth_dst: XC_MAC,
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            ttl: 64,
            ip_options: false,
            l4,
            payload: b"understudy".to_vec(),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let proto = match self.l4 {
            L4::Tcp { .. } | L4::SynAck | L4::Rst => IpNumber::TCP,
            L4::Udp => IpNumber::UDP,
        };
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(0, self.ttl, proto, s.octets(), d.octets()).unwrap();
                if self.ip_options {
                    // Four NOPs and an end-of-options list: IHL 7.
                    h.options = Ipv4Options::try_from(&[1u8, 1, 1, 1, 0, 0, 0, 0][..]).unwrap();
                }
                IpHeaders::Ipv4(h, Ipv4Extensions::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: 0,
                    next_header: proto,
                    hop_limit: self.ttl,
                    source: s.octets(),
                    destination: d.octets(),
                },
                Ipv6Extensions::default(),
            ),
            _ => panic!("mixed families"),
        };
        let step = match self.vlan {
            Some(v) => PacketBuilder::ethernet2(self.eth_src, self.eth_dst)
                .single_vlan(VlanId::try_new(v).unwrap())
                .ip(ip),
            None => PacketBuilder::ethernet2(self.eth_src, self.eth_dst).ip(ip),
        };
        let mut out = Vec::new();
        match self.l4 {
            L4::Tcp { syn: true } => step
                .tcp(self.sport, self.dport, 1000, 64240)
                .syn()
                .write(&mut out, &self.payload),
            L4::Tcp { syn: false } => step
                .tcp(self.sport, self.dport, 1001, 64240)
                .ack(1)
                .write(&mut out, &self.payload),
            L4::SynAck => step
                .tcp(self.sport, self.dport, 5000, 64240)
                .syn()
                .ack(1001)
                .write(&mut out, &self.payload),
            L4::Rst => step
                .tcp(self.sport, self.dport, 0, 0)
                .rst()
                .ack(1001)
                .write(&mut out, &[]),
            L4::Udp => step
                .udp(self.sport, self.dport)
                .write(&mut out, &self.payload),
        }
        .unwrap();
        out
    }

    /// The packet with only its destination translated: what the program hands to the stack.
    pub fn translated_to(&self, backend: IpAddr, port: u16) -> Pkt {
        Pkt {
            dst: backend,
            dport: port,
            ..self.clone()
        }
    }

    /// The backend's answer to this client packet as it arrives on `xb`: from `backend`, port
    /// 8080, to the client's address and port.
    pub fn reply_from(&self, backend: IpAddr) -> Pkt {
        Pkt {
            eth_src: backend_mac(backend),
            eth_dst: XB_MAC,
            src: backend,
            dst: self.src,
            sport: 8080,
            dport: self.sport,
            ..self.clone()
        }
    }

    /// What the program should send to the client for this backend reply: the VIP `vip`:`port`
    /// as its source, TTL - 1, the client's next-hop MACs.
    pub fn returned_from(&self, vip: &str, port: u16) -> Pkt {
        Pkt {
            eth_src: XC_MAC,
            eth_dst: CLIENT_MAC,
            src: vip.parse().unwrap(),
            sport: port,
            ttl: self.ttl - 1,
            ..self.clone()
        }
    }

    /// What the program should send to the backend itself: DNAT, TTL - 1, next-hop MACs.
    pub fn forwarded_to(&self, backend: IpAddr, port: u16) -> Pkt {
        Pkt {
            eth_src: XB_MAC,
            eth_dst: backend_mac(backend),
            ttl: self.ttl - 1,
            ..self.translated_to(backend, port)
        }
    }
}

/// The destination address and port of an output packet, read with etherparse.
pub fn destination(out: &[u8]) -> (IpAddr, u16) {
    let p = SlicedPacket::from_ethernet(out).expect("output parses");
    let ip = match p.net.expect("has an IP header") {
        etherparse::NetSlice::Ipv4(v4) => IpAddr::from(v4.header().destination()),
        etherparse::NetSlice::Ipv6(v6) => IpAddr::from(v6.header().destination()),
        _ => panic!("not IP"),
    };
    let port = match p.transport.expect("has ports") {
        TransportSlice::Tcp(t) => t.destination_port(),
        TransportSlice::Udp(u) => u.destination_port(),
        _ => panic!("not TCP/UDP"),
    };
    (ip, port)
}

pub fn assert_bytes(case: &str, got: &[u8], want: &[u8]) {
    assert_eq!(
        got,
        want,
        "{case}: output differs at byte {:?}",
        got.iter().zip(want).position(|(a, b)| a != b)
    );
}
