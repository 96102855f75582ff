//! The standard test and demo network: a client, a balancer and N backends, each in its own
//! namespace, joined to the balancer by veth pairs. Interface names in the balancer are fixed
//! (`lb-client`, `lb-be1`...) because they live in the balancer's own namespace.
//!
//! ```text
//!  client 10.0.1.2 ─ eth0 ══ lb-client 10.0.1.1 ┐
//!                                 balancer        ├ lb-beI 10.0.1I.1 ══ eth0 10.0.1I.2  backend I
//!  VIP 10.0.0.10 / fd00::10 is routed to the balancer and held by no interface.
//! ```
//! IPv6 mirrors it: fd00:1::/64 for the client, fd00:1I::/64 for backend I.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use crate::Netns;

pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);

/// Backend `i`'s (1-based) IPv4 address.
pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 10 + i as u8, 2)
}

/// Backend `i`'s (1-based) IPv6 address.
pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10 + i as u16, 0, 0, 0, 0, 0, 2)
}

pub struct Topology {
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
}

/// A host's end of a link: no TX checksum offload, so its packets carry complete checksums that
/// XDP can update incrementally (a partial one cannot be); GRO on, so frames that XDP redirects
/// into the veth are accepted.
fn host_link(ns: &Netns, dev: &str) {
    ns.exec(&["ethtool", "-K", dev, "tx", "off", "gro", "on"]);
}

/// Joins `lb` (interface `lb_dev`, gateway addresses `gw`) to `host` (interface `eth0`, addresses
/// `addrs`, default routes through `gw`), both /24 and /64, both ends up.
fn link(lb: &Netns, lb_dev: &str, gw: (&str, &str), host: &Netns, addrs: (Ipv4Addr, Ipv6Addr)) {
    lb.veth_to(lb_dev, host, "eth0");
    lb.ip(&["addr", "add", &format!("{}/24", gw.0), "dev", lb_dev]);
    lb.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", gw.1),
        "dev",
        lb_dev,
        "nodad",
    ]);
    lb.ip(&["link", "set", lb_dev, "up"]);
    host.ip(&["addr", "add", &format!("{}/24", addrs.0), "dev", "eth0"]);
    host.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", addrs.1),
        "dev",
        "eth0",
        "nodad",
    ]);
    host.ip(&["link", "set", "eth0", "up"]);
    host.ip(&["route", "add", "default", "via", gw.0]);
    host.ip(&["-6", "route", "add", "default", "via", gw.1]);
    host_link(host, "eth0");
}

impl Topology {
    /// Builds the network with `n` backends (at most 9). Routes, addresses and forwarding are set;
    /// nothing listens yet.
    pub fn build(n: usize) -> Topology {
        assert!((1..=9).contains(&n));
        let client = Netns::new("client");
        let lb = Netns::new("lb");
        let backends: Vec<Netns> = (1..=n).map(|i| Netns::new(&format!("be{i}"))).collect();

        link(
            &lb,
            "lb-client",
            ("10.0.1.1", "fd00:1::1"),
            &client,
            (CLIENT_V4, CLIENT_V6),
        );
        for (idx, be) in backends.iter().enumerate() {
            let i = idx + 1;
            link(
                &lb,
                &format!("lb-be{i}"),
                (
                    &format!("10.0.{}.1", 10 + i),
                    &format!("fd00:{:x}::1", 0x10 + i),
                ),
                be,
                (backend_v4(i), backend_v6(i)),
            );
        }

        // The balancer routes: translated packets that XDP hands to the stack are forwarded.
        lb.sysctl("net.ipv4.ip_forward", "1");
        lb.sysctl("net.ipv6.conf.all.forwarding", "1");
        lb.sysctl("net.ipv4.conf.all.rp_filter", "0");
        lb.sysctl("net.ipv4.conf.default.rp_filter", "0");
        Topology {
            client,
            lb,
            backends,
        }
    }

    /// The balancer-side interfaces, as a config lists them.
    pub fn lb_interfaces(&self) -> Vec<String> {
        let mut v = vec!["lb-client".to_string()];
        v.extend((1..=self.backends.len()).map(|i| format!("lb-be{i}")));
        v
    }

    /// The `[dataplane]` section for a daemon in this topology: its interfaces, and an instance
    /// named after the balancer's namespace, so parallel daemons never share pinned state.
    pub fn dataplane_toml(&self) -> String {
        let interfaces: Vec<String> = self
            .lb_interfaces()
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect();
        format!(
            "[dataplane]\ninterfaces = [{}]\ninstance = \"{}\"\n",
            interfaces.join(", "),
            self.lb.name()
        )
    }

    /// A whole config for one service "echo" on the IPv4 VIP, port 80: `[dataplane]` as above,
    /// then `sections` (such as an `[admin]` table), the service with `service` lines (which may
    /// end with its `[service.health]` table), and the backends `(index, extra lines)`, each on
    /// port 8080. Written to a file named after the namespace, whose path it returns.
    pub fn echo_config(
        &self,
        sections: &str,
        service: &str,
        backends: &[(usize, &str)],
    ) -> PathBuf {
        let mut text = format!(
            "{}\n{sections}\n\n[[service]]\nname = \"echo\"\nvip = \"{VIP_V4}:80\"\n{service}\n",
            self.dataplane_toml()
        );
        for (i, extra) in backends {
            text.push_str(&format!(
                "\n[[service.backend]]\naddress = \"{}:8080\"\n{extra}\n",
                backend_v4(*i)
            ));
        }
        let path = std::env::temp_dir().join(format!("{}.toml", self.lb.name()));
        std::fs::write(&path, text).expect("write the config");
        path
    }

    /// Makes the backends answer clients directly for the VIPs `vips`, as DSR and tunnel
    /// backends do: each backend holds them on its loopback (with `arp_ignore`/`arp_announce`
    /// so it never answers ARP for them), and gets a second link `ret0` straight to the client
    /// (client side `retI`, 10.0.2I.0/24 and fd00:2I::/64). Packets *from* a VIP leave by it
    /// (a source rule, table 100); everything else, NAT replies included, still goes through
    /// the balancer. Reverse-path filtering is off on both ends, since each sees the other's
    /// packets arrive on a link other than its route back. The balancer never sees a direct
    /// reply, which its interface counters show ([`Topology::lb_rx_packets`]).
    pub fn add_return_paths(&self, vips: &[IpAddr]) {
        for ns in std::iter::once(&self.client).chain(&self.backends) {
            for key in ["all", "default"] {
                ns.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
            }
        }
        for (idx, be) in self.backends.iter().enumerate() {
            let i = idx + 1;
            let dev = format!("ret{i}");
            self.client.veth_to(&dev, be, "ret0");
            let (c4, b4) = (format!("10.0.{}.1", 20 + i), format!("10.0.{}.2", 20 + i));
            let (c6, b6) = (
                format!("fd00:{:x}::1", 0x20 + i),
                format!("fd00:{:x}::2", 0x20 + i),
            );
            self.client
                .ip(&["addr", "add", &format!("{c4}/24"), "dev", &dev]);
            self.client.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{c6}/64"),
                "dev",
                &dev,
                "nodad",
            ]);
            self.client.ip(&["link", "set", &dev, "up"]);
            self.client
                .sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0");
            host_link(&self.client, &dev);
            be.ip(&["addr", "add", &format!("{b4}/24"), "dev", "ret0"]);
            be.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{b6}/64"),
                "dev",
                "ret0",
                "nodad",
            ]);
            be.ip(&["link", "set", "ret0", "up"]);
            host_link(be, "ret0");
            be.ip(&[
                "route",
                "add",
                "10.0.1.0/24",
                "via",
                &c4,
                "dev",
                "ret0",
                "table",
                "100",
            ]);
            be.ip(&[
                "-6",
                "route",
                "add",
                "fd00:1::/64",
                "via",
                &c6,
                "dev",
                "ret0",
                "table",
                "100",
            ]);
            for vip in vips {
                let (family, len) = if vip.is_ipv4() {
                    ("-4", 32)
                } else {
                    ("-6", 128)
                };
                be.ip(&[family, "addr", "add", &format!("{vip}/{len}"), "dev", "lo"]);
                be.ip(&[
                    family,
                    "rule",
                    "add",
                    "from",
                    &vip.to_string(),
                    "lookup",
                    "100",
                ]);
            }
            be.sysctl("net.ipv4.conf.all.arp_ignore", "1");
            be.sysctl("net.ipv4.conf.all.arp_announce", "2");
            for dev in ["eth0", "ret0"] {
                be.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0");
            }
        }
    }

    /// Packets the balancer has received on its link to backend `i` (1-based).
    pub fn lb_rx_packets(&self, i: usize) -> u64 {
        self.lb
            .exec(&[
                "cat",
                &format!("/sys/class/net/lb-be{i}/statistics/rx_packets"),
            ])
            .trim()
            .parse()
            .expect("rx_packets")
    }

    pub fn vip(&self, v6: bool) -> IpAddr {
        if v6 { VIP_V6.into() } else { VIP_V4.into() }
    }

    pub fn backend_addr(&self, i: usize, v6: bool) -> IpAddr {
        if v6 {
            backend_v6(i).into()
        } else {
            backend_v4(i).into()
        }
    }
}
