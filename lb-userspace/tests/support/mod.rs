//! Shared by the kernel `test_run` tests: the data plane, loaded in a namespace where the FIB
//! answers deterministically and driven through the map writer. It is the one piece of the test
//! harness that needs the daemon's library; packets, addresses and namespaces come from
//! `understudy_testbed`.

use lb_common::Counter;
use understudy::{
    config::Config,
    dataplane::{Dataplane, XDP_PROGRAM},
    plan::plan,
    writer::Writer,
};
pub use understudy_testbed::packet::*;
use understudy_testbed::{FibNamespace, Netns, require_root};

/// The data plane, loaded and filled from `config`, driven through the map writer.
pub struct Bed {
    pub ns: Netns,
    pub writer: Writer,
    pub xc: u32,
    pub xb: u32,
}

pub fn bed(config: &str) -> Bed {
    bed_sized(config, lb_common::FLOWS_CAPACITY)
}

/// As [`bed`], with flow maps of `max_flows` entries.
pub fn bed_sized(config: &str, max_flows: u32) -> Bed {
    require_root("the XDP test_run tests");
    let FibNamespace { ns, xc, xb } = FibNamespace::build();
    let config = Config::parse("test.toml".as_ref(), config).unwrap();
    let dp = Dataplane::load_sized(max_flows).expect("load the XDP object");
    let mut writer = Writer::new(dp, plan(&config));
    writer.install().expect("install the plan");
    Bed { ns, writer, xc, xb }
}

impl Bed {
    pub fn dp(&mut self) -> &mut Dataplane {
        self.writer.dataplane_mut()
    }

    /// Runs the program once on `pkt` as if it arrived on `ifindex`; returns the action and the
    /// packet as the program left it.
    pub fn run(&mut self, pkt: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        use aya::programs::{TestRun as _, TestRunOptions};
        let ctx = FibNamespace::xdp_ctx(pkt.len(), ifindex);
        let prog = self.writer.dataplane_mut().program(XDP_PROGRAM).unwrap();
        let mut out = vec![0u8; pkt.len() + 256];
        let result = self.ns.enter(|| {
            prog.test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
        });
        let result = result.expect("test_run");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.writer.dataplane().counters().unwrap().get(c)
    }
}

/// The `FLOWS` key of a packet as the program builds it (the client's 5-tuple, as sent).
#[allow(dead_code)]
pub fn flow_key(p: &Pkt) -> lb_common::FlowKey {
    let (src, family) = lb_common::addr_words(p.src);
    let (dst, _) = lb_common::addr_words(p.dst);
    lb_common::FlowKey {
        src,
        dst,
        src_port: p.sport.to_be(),
        dst_port: p.dport.to_be(),
        proto: match p.l4 {
            L4::Udp => lb_common::PROTO_UDP,
            _ => lb_common::PROTO_TCP,
        },
        family,
        _pad: 0,
    }
}

#[allow(dead_code)]
/// `packet` (Ethernet, IP, then a transport header and payload) cut into two fragments of
/// datagram `id`, the first carrying `split` bytes of the IP payload (a multiple of 8).
pub fn fragments(packet: &[u8], v6: bool, split: usize, id: u32) -> [Vec<u8>; 2] {
    let eth = &packet[..14];
    if !v6 {
        let (ip, payload) = etherparse::Ipv4Header::from_slice(&packet[14..]).unwrap();
        let piece = |data: &[u8], offset: usize, more: bool| {
            let mut h = ip.clone();
            h.identification = id as u16;
            h.more_fragments = more;
            h.fragment_offset = etherparse::IpFragOffset::try_new((offset / 8) as u16).unwrap();
            h.set_payload_len(data.len()).unwrap();
            h.header_checksum = h.calc_header_checksum();
            let mut out = eth.to_vec();
            out.extend_from_slice(&h.to_bytes());
            out.extend_from_slice(data);
            out
        };
        [
            piece(&payload[..split], 0, true),
            piece(&payload[split..], split, false),
        ]
    } else {
        let (ip, payload) = etherparse::Ipv6Header::from_slice(&packet[14..]).unwrap();
        let piece = |data: &[u8], offset: usize, more: bool| {
            let mut h = ip.clone();
            h.next_header = etherparse::IpNumber(44);
            h.payload_length = (8 + data.len()) as u16;
            let mut out = eth.to_vec();
            out.extend_from_slice(&h.to_bytes());
            let off = ((offset / 8) as u16) << 3 | more as u16;
            out.push(ip.next_header.0);
            out.push(0);
            out.extend_from_slice(&off.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(data);
            out
        };
        [
            piece(&payload[..split], 0, true),
            piece(&payload[split..], split, false),
        ]
    }
}
