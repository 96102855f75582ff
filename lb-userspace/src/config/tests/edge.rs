//! Edge protection's config: access lists, rate limits and the flood guard, with located errors.

use super::*;

/// A NAT service with `extra` appended to its table.
fn with(extra: &str) -> String {
    format!(
        "[dataplane]\ninterfaces = [\"eth0\"]\n\n[[service]]\nname = \"web\"\nvip = \"10.0.0.10:80\"\n{extra}\n\n[[service.backend]]\naddress = \"10.0.11.2:8080\"\n"
    )
}

#[test]
fn reads_lists_limits_and_the_flood_threshold() {
    let text = r#"
[dataplane]
interfaces = ["eth0"]
flood_threshold = 5000
acl = { deny = ["192.0.2.0/24"], action = "reset" }

[[service]]
name = "web"
vip = "10.0.0.10:80"
acl = { allow = ["198.51.100.0/24", "2001:db8::/32", "203.0.113.7"] }
rate_limit = { connections_per_second = 50, ipv4_prefix = 24, exempt = ["198.51.100.1/32"] }
backend = [{ address = "10.0.11.2:8080" }]
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.flood_threshold, 5000);
    assert_eq!(c.acl.deny, vec!["192.0.2.0/24".parse().unwrap()]);
    assert_eq!(c.acl.action, Refusal::Reset);
    let web = &c.services[0];
    assert_eq!(web.acl.allow.len(), 3);
    assert_eq!(web.acl.allow[2], "203.0.113.7/32".parse().unwrap());
    let r = web.rate_limit.as_ref().unwrap();
    assert_eq!(
        (r.per_second, r.burst),
        (50, 50),
        "burst defaults to one second"
    );
    assert_eq!((r.ipv4_prefix, r.ipv6_prefix), (24, 128));
    assert_eq!(r.action, Refusal::Drop);
    // Defaults: no lists, no limit, the guard on at its documented default.
    let plain = parse(&with("")).unwrap();
    assert!(plain.acl.is_empty() && plain.services[0].rate_limit.is_none());
    assert_eq!(plain.flood_threshold, DEFAULT_FLOOD_THRESHOLD);
}

#[test]
fn a_bad_prefix_says_which_and_where() {
    fails(
        &with("acl = { deny = [\"192.0.2.0/24\", \"10.0.0.300/8\"] }"),
        7,
        "service[0].acl.deny[1]",
        "\"10.0.0.300/8\" is not an address prefix",
        "203.0.113.0/24",
    );
    fails(
        &with("acl = { allow = [\"10.1.2.3/8\"] }"),
        7,
        "service[0].acl.allow[0]",
        "bits set past its /8 prefix",
        "\"10.0.0.0/8\"",
    );
    fails(
        &with("rate_limit = { connections_per_second = 10, exempt = [\"2001:db8::/129\"] }"),
        7,
        "service[0].rate_limit.exempt[0]",
        "not an address prefix",
        "2001:db8::/32",
    );
    let text = "[dataplane]\ninterfaces = [\"eth0\"]\nacl = { deny = [\"nope\"] }\n";
    fails(
        text,
        3,
        "dataplane.acl.deny[0]",
        "\"nope\" is not an address prefix",
        "prefix",
    );
}

#[test]
fn rate_limits_out_of_range_are_refused() {
    fails(
        &with("rate_limit = { connections_per_second = 0 }"),
        7,
        "service[0].rate_limit.connections_per_second",
        "0 is out of range",
        "from 1 to 10000000",
    );
    fails(
        &with("rate_limit = { connections_per_second = 5, burst = 0 }"),
        7,
        "service[0].rate_limit.burst",
        "would refuse every connection",
        "at least 1",
    );
    fails(
        &with("rate_limit = { connections_per_second = 5, ipv4_prefix = 33 }"),
        7,
        "service[0].rate_limit.ipv4_prefix",
        "/33 is not a prefix length",
        "1 to 32",
    );
}

#[test]
fn lists_on_an_http_service_are_refused() {
    fails(
        &with("mode = \"http\"\nacl = { deny = [\"192.0.2.0/24\"] }"),
        8,
        "service[0].acl",
        "is the XDP program's",
        "mode = \"nat\"",
    );
}

#[test]
fn more_prefixes_than_the_tries_hold_are_refused() {
    let deny: Vec<String> = (0..=lb_common::edge::ACL_CAPACITY)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    fails(
        &with(&format!("acl = {{ deny = [{}] }}", deny.join(", "))),
        7,
        "service[0].acl",
        "more than 16384 IPv4 prefixes in all",
        "merging neighbouring prefixes",
    );
}
