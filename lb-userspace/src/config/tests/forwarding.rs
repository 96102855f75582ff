//! The forwarding modes' config: `mode = "dsr"` and `mode = "tunnel"` with `[service.tunnel]`,
//! and every mode/family/port combination that cannot work refused where it is written.

use super::*;
use crate::config::{Encap, Tunnel};

/// A service in `mode` with `extra` appended to its table and one backend at `backend`.
fn service(mode: &str, vip: &str, backend: &str, extra: &str) -> String {
    format!(
        "[dataplane]\ninterfaces = [\"eth0\"]\n\n[[service]]\nname = \"web\"\nvip = \"{vip}\"\nmode = \"{mode}\"\n{extra}\n\n[[service.backend]]\naddress = \"{backend}\"\n"
    )
}

#[test]
fn reads_dsr_and_both_tunnels() {
    let c = parse(&service("dsr", "10.0.0.10:80", "10.0.11.2:80", "")).unwrap();
    assert_eq!(c.services[0].mode, Mode::Dsr);
    let c = parse(&service("tunnel", "10.0.0.10:80", "10.0.11.2:80", "")).unwrap();
    assert_eq!(
        c.services[0].mode,
        Mode::Tunnel(Tunnel {
            encap: Encap::Ipip,
            port: 6080,
            source_v4: None,
            source_v6: None
        })
    );
    let c = parse(&service(
        "tunnel",
        "[fd00::10]:80",
        "10.0.11.2:80",
        "tunnel = { encap = \"gue\", port = 7000, source_v4 = \"10.0.11.1\" }",
    ))
    .unwrap();
    assert_eq!(
        c.services[0].mode,
        Mode::Tunnel(Tunnel {
            encap: Encap::Gue,
            port: 7000,
            source_v4: Some("10.0.11.1".parse().unwrap()),
            source_v6: None
        }),
        "6in4: an IPv6 VIP on an IPv4 backend"
    );
}

#[test]
fn a_backend_port_other_than_the_vips_is_refused() {
    for mode in ["dsr", "tunnel"] {
        fails(
            &service(mode, "10.0.0.10:80", "10.0.11.2:8080", ""),
            11,
            "service[0].backend[0].address",
            "still addressed to the VIP and its port",
            "\"10.0.11.2:80\"",
        );
    }
}

#[test]
fn dsr_across_families_is_refused_and_points_to_tunnels() {
    fails(
        &service("dsr", "[fd00::10]:80", "10.0.11.2:80", ""),
        11,
        "service[0].backend[0].address",
        "different IP families",
        "mode = \"tunnel\"",
    );
}

#[test]
fn tunnel_settings_are_checked() {
    fails(
        &service(
            "tunnel",
            "10.0.0.10:80",
            "10.0.11.2:80",
            "tunnel = { port = 7000 }",
        ),
        8,
        "service[0].tunnel.port",
        "this tunnel is IPIP",
        "encap = \"gue\"",
    );
    fails(
        &service(
            "tunnel",
            "10.0.0.10:80",
            "10.0.11.2:80",
            "tunnel = { source_v4 = \"fd00::1\" }",
        ),
        8,
        "service[0].tunnel.source_v4",
        "not a unicast IPv4 address",
        "leave it out",
    );
    fails(
        &service(
            "nat",
            "10.0.0.10:80",
            "10.0.11.2:80",
            "tunnel = { encap = \"gue\" }",
        ),
        8,
        "service[0].tunnel",
        "applies to mode = \"tunnel\"",
        "mode = \"tunnel\"",
    );
}

#[test]
fn nat_still_refuses_mixed_families() {
    fails(
        &service("nat", "[fd00::10]:80", "10.0.11.2:80", ""),
        11,
        "service[0].backend[0].address",
        "different IP families",
        "mode = \"tunnel\"",
    );
}

#[test]
fn checks_follow_the_clients_path_unless_told_to_go_direct() {
    use crate::config::Via;
    let c = parse(&service(
        "dsr",
        "10.0.0.10:80",
        "10.0.11.2:80",
        "health = { kind = \"tcp\" }",
    ))
    .unwrap();
    assert_eq!(c.services[0].health.via, Via::Path);
    let c = parse(&service(
        "tunnel",
        "10.0.0.10:80",
        "10.0.11.2:80",
        "health = { kind = \"tcp\", via = \"direct\" }",
    ))
    .unwrap();
    assert_eq!(c.services[0].health.via, Via::Direct);
    let err = parse(&service(
        "dsr",
        "10.0.0.10:80",
        "10.0.11.2:80",
        "health = { kind = \"tcp\", via = \"sideways\" }",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("test.toml:8:")
            && err.contains("health.via")
            && err.contains("sideways")
            && err.contains("direct"),
        "{err}"
    );
}
