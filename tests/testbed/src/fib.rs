//! A namespace where `bpf_fib_lookup` answers deterministically, for `BPF_PROG_TEST_RUN`: two
//! veth interfaces with fixed MACs, `xc` (client side, 10.0.1.1, fd00:1::1) and `xb` (backend
//! side, 10.0.11.1, fd00:11::1), and permanent neighbour entries for the client (10.0.1.2,
//! fd00:1::2) and the backends 10.0.11.2-4 and fd00:11::2-3 (MAC 02:00:00:00:11:<last byte>).

use std::net::IpAddr;

use crate::Netns;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const XC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const XB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x11, 0x01];

/// The MAC the namespace's neighbour table gives a backend address.
pub fn backend_mac(ip: IpAddr) -> [u8; 6] {
    let last = match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    [0x02, 0, 0, 0, 0x11, last]
}

pub struct FibNamespace {
    pub ns: Netns,
    /// ifindex of `xc`, where client packets arrive.
    pub xc: u32,
    /// ifindex of `xb`, where backend replies arrive.
    pub xb: u32,
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

impl FibNamespace {
    pub fn build() -> FibNamespace {
        let ns = Netns::new("fib");
        for (dev, m) in [("xc", XC_MAC), ("xb", XB_MAC)] {
            let peer = format!("{dev}-peer");
            ns.ip(&[
                "link",
                "add",
                dev,
                "address",
                &mac(m),
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["link", "set", &peer, "up"]);
        }
        ns.ip(&["addr", "add", "10.0.1.1/24", "dev", "xc"]);
        ns.ip(&["addr", "add", "10.0.11.1/24", "dev", "xb"]);
        ns.ip(&["-6", "addr", "add", "fd00:1::1/64", "dev", "xc", "nodad"]);
        ns.ip(&["-6", "addr", "add", "fd00:11::1/64", "dev", "xb", "nodad"]);
        let neigh = |ip: &str, m: [u8; 6], dev: &str| {
            ns.ip(&[
                "neigh",
                "add",
                ip,
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        };
        neigh("10.0.1.2", CLIENT_MAC, "xc");
        neigh("fd00:1::2", CLIENT_MAC, "xc");
        for ip in [
            "10.0.11.2",
            "10.0.11.3",
            "10.0.11.4",
            "fd00:11::2",
            "fd00:11::3",
        ] {
            neigh(ip, backend_mac(ip.parse().unwrap()), "xb");
        }
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        let index = |dev: &str| -> u32 {
            ns.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
                .trim()
                .parse()
                .expect("ifindex")
        };
        let (xc, xb) = (index("xc"), index("xb"));
        FibNamespace { ns, xc, xb }
    }

    /// The `xdp_md` context for a `test_run` of a `len`-byte packet arriving on `ifindex`.
    pub fn xdp_ctx(len: usize, ifindex: u32) -> Vec<u8> {
        [0u32, len as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }
}
