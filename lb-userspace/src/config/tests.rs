use super::*;

const GOOD: &str = r#"
[dataplane]
interfaces = ["veth0", "veth1"]
xdp_mode = "native"

[[service]]
name = "web"
vip = "10.0.0.10:80"
table_size = 1021

[[service.backend]]
address = "10.0.11.2:8080"

[[service.backend]]
address = "10.0.12.2:8080"
weight = 3

[[service]]
name = "dns"
vip = "10.0.0.10:53"
protocol = "udp"
hash = "source_ip"

[[service.backend]]
address = "10.0.11.2:53"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

/// Parses `text`, expects an error, and checks where it points and what it says.
fn fails(text: &str, line: usize, field: &str, problem: &str, fix: &str) -> ConfigError {
    let e = parse(text).expect_err("config should be refused");
    assert_eq!(e.line, line, "line of {e}");
    assert!(e.column > 0, "column of {e}");
    assert_eq!(e.field, field, "field of {e}");
    assert!(e.problem.contains(problem), "problem of {e}");
    assert!(e.fix.contains(fix), "fix of {e}");
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("test.toml:{line}:")), "{shown}");
    assert!(shown.contains("fix: "), "{shown}");
    e
}

#[test]
fn accepts_a_good_config_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.interfaces.len(), 2);
    assert_eq!(c.interfaces[1].name, "veth1");
    assert_eq!(c.interfaces[1].line, 3);
    assert_eq!(c.xdp_mode, XdpMode::Native);
    let web = &c.services[0];
    assert_eq!(web.vip, "10.0.0.10:80".parse().unwrap());
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.mode, ForwardingMode::Nat);
    assert_eq!(web.hash, HashMode::FiveTuple);
    assert_eq!(web.table_size, 1021);
    assert_eq!(web.backends[0].weight, DEFAULT_WEIGHT);
    assert_eq!(web.backends[1].weight, 3);
    let dns = &c.services[1];
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(dns.hash, HashMode::SourceIp);
    assert_eq!(dns.table_size, DEFAULT_TABLE_SIZE);
}

#[test]
fn accepts_ipv6() {
    let text = GOOD
        .replace("10.0.0.10:80", "[2001:db8::10]:80")
        .replace("10.0.11.2:8080", "[2001:db8:11::2]:8080")
        .replace("10.0.12.2:8080", "[2001:db8:12::2]:8080");
    let c = parse(&text).unwrap();
    assert!(c.services[0].vip.is_ipv6());
}

#[test]
fn toml_syntax_error() {
    fails(
        &GOOD.replace("name = \"web\"", "name = \"web"),
        7,
        "",
        "",
        "TOML syntax",
    );
}

#[test]
fn unknown_field() {
    fails(
        &GOOD.replace("table_size = 1021", "table_sise = 1021"),
        9,
        "service[0].table_sise",
        "unknown field `table_sise`",
        "spelling",
    );
}

#[test]
fn unknown_enum_value() {
    fails(
        &GOOD.replace("protocol = \"udp\"", "protocol = \"sctp\""),
        21,
        "service[1].protocol",
        "unknown variant `sctp`",
        "one of",
    );
}

#[test]
fn wrong_type() {
    fails(
        &GOOD.replace("weight = 3", "weight = \"3\""),
        16,
        "service[0].backend[1].weight",
        "invalid type",
        "type",
    );
}

#[test]
fn missing_dataplane() {
    let e = parse("[[service]]\nname = \"x\"\nvip = \"10.0.0.1:80\"\n").unwrap_err();
    assert!(e.problem.contains("missing field `dataplane`"), "{e}");
    assert!(e.fix.contains("add the missing field"), "{e}");
}

#[test]
fn no_interfaces() {
    fails(
        &GOOD.replace("[\"veth0\", \"veth1\"]", "[]"),
        3,
        "dataplane.interfaces",
        "no interface",
        "interfaces = [",
    );
}

#[test]
fn bad_and_duplicate_interface_names() {
    fails(
        &GOOD.replace("\"veth1\"", "\"a/b\""),
        3,
        "dataplane.interfaces[1]",
        "not a valid interface name",
        "ip link",
    );
    fails(
        &GOOD.replace("\"veth1\"", "\"veth0\""),
        3,
        "dataplane.interfaces[1]",
        "listed twice",
        "once",
    );
}

#[test]
fn bad_vip() {
    fails(
        &GOOD.replace("10.0.0.10:80", "10.0.0.300:80"),
        8,
        "service[0].vip",
        "\"10.0.0.300:80\" is not an address with a port",
        "10.0.0.10:80",
    );
    fails(
        &GOOD.replace("10.0.0.10:80", "10.0.0.10"),
        8,
        "service[0].vip",
        "not an address with a port",
        "port",
    );
    fails(
        &GOOD.replace("10.0.0.10:80", "10.0.0.10:0"),
        8,
        "service[0].vip",
        "port 0",
        "real port",
    );
    fails(
        &GOOD.replace("10.0.0.10:80", "0.0.0.0:80"),
        8,
        "service[0].vip",
        "cannot be a VIP",
        "unicast",
    );
}

#[test]
fn vip_given_twice() {
    let e = fails(
        &GOOD
            .replace("10.0.0.10:53", "10.0.0.10:80")
            .replace("\"udp\"", "\"tcp\""),
        20,
        "service[1].vip",
        "10.0.0.10:80/tcp is already the VIP of service \"web\" (line 8)",
        "own address, port or protocol",
    );
    assert_eq!(e.column, 7);
    // The same address and port over another protocol is a different VIP.
    parse(&GOOD.replace("10.0.0.10:53", "10.0.0.10:80")).unwrap();
}

#[test]
fn duplicate_or_bad_service_name() {
    fails(
        &GOOD.replace("name = \"dns\"", "name = \"web\""),
        19,
        "service[1].name",
        "already named \"web\"",
        "own name",
    );
    fails(
        &GOOD.replace("name = \"dns\"", "name = \"d n s\""),
        19,
        "service[1].name",
        "not a valid service name",
        "letters",
    );
}

#[test]
fn service_without_backends() {
    let text = GOOD
        .split("[[service.backend]]\naddress = \"10.0.11.2:53\"")
        .next()
        .unwrap();
    fails(
        text,
        19,
        "service[1].backend",
        "has no backend",
        "[[service.backend]]",
    );
}

#[test]
fn bad_backends() {
    fails(
        &GOOD.replace("10.0.12.2:8080", "10.0.12.2"),
        15,
        "service[0].backend[1].address",
        "not an address with a port",
        "10.0.11.2:8080",
    );
    fails(
        &GOOD.replace("10.0.12.2:8080", "[2001:db8::2]:8080"),
        15,
        "service[0].backend[1].address",
        "different IP families",
        "VIP's family",
    );
    fails(
        &GOOD.replace("10.0.12.2:8080", "10.0.11.2:8080"),
        15,
        "service[0].backend[1].address",
        "listed twice",
        "weight",
    );
    fails(
        &GOOD.replace("weight = 3", "weight = 0"),
        16,
        "service[0].backend[1].weight",
        "out of range",
        "from 1 to 1000",
    );
}

#[test]
fn bad_table_sizes() {
    fails(
        &GOOD.replace("1021", "1000"),
        9,
        "service[0].table_size",
        "1000 is not a prime",
        "such as 1009",
    );
    fails(
        &GOOD.replace("1021", "70001"),
        9,
        "service[0].table_size",
        "larger than the largest table, 65537",
        "65537",
    );
    fails(
        &GOOD.replace("1021", "1"),
        9,
        "service[0].table_size",
        "smaller than the number of backends",
        "such as 211",
    );
}

#[test]
fn too_many_services() {
    let mut text = String::from("[dataplane]\ninterfaces = [\"eth0\"]\n");
    for i in 0..=MAX_SERVICES {
        text.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"10.1.{}.{}:80\"\n[[service.backend]]\naddress = \"10.2.0.1:80\"\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let e = parse(&text).unwrap_err();
    assert!(e.problem.contains("more than 128 services"), "{e}");
    assert_eq!(e.field, "service[128]");
}

#[test]
fn unreadable_file_names_the_path() {
    let e = Config::load(Path::new("/nonexistent/understudy.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/understudy.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 1, "no config in {}", dir.display());
}
