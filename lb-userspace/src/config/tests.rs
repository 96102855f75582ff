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
    assert_eq!(web.mode, Mode::Nat);
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

const CHECKED: &str = r#"
[dataplane]
interfaces = ["veth0"]

[[service]]
name = "web"
vip = "10.0.0.10:80"
min_healthy = 2
on_all_down = "reject"

[service.health]
kind = "http"
interval = "100ms"
timeout = "50ms"
rise = 2
fall = 2
path = "/healthz"
expect_status = ["200-299", "301"]

[service.passive]
events_to_eject = 3
base_ejection = "1s"
max_ejection = "4s"

[[service.backend]]
address = "10.0.11.2:8080"
[[service.backend]]
address = "10.0.12.2:8080"
tier = 1
drain = true
"#;

#[test]
fn accepts_health_tiers_and_passive_settings() {
    let c = parse(CHECKED).unwrap();
    let s = &c.services[0];
    assert_eq!(s.min_healthy, MinHealthy::Count(2));
    assert_eq!(s.on_all_down, OnAllDown::Reject);
    assert!(s.wait_for_first_check);
    assert_eq!(s.health.interval, std::time::Duration::from_millis(100));
    assert_eq!(s.health.fall, 2);
    let Check::Http(http) = &s.health.check else {
        panic!("an http check, not {}", s.health.check);
    };
    assert_eq!(http.path, "/healthz");
    assert_eq!(http.expect_status, vec![(200, 299), (301, 301)]);
    assert_eq!(s.passive.events_to_eject, 3);
    assert_eq!(s.passive.max_ejection, std::time::Duration::from_secs(4));
    assert_eq!((s.backends[1].tier, s.backends[1].drain), (1, true));
    let ratio = parse(&CHECKED.replace("min_healthy = 2", "min_healthy = 0.5")).unwrap();
    assert_eq!(ratio.services[0].min_healthy, MinHealthy::Ratio(0.5));
}

#[test]
fn health_and_tier_errors() {
    let cases: &[(&str, &str, usize, &str, &str, &str)] = &[
        (
            "kind = \"http\"",
            "kind = \"tcp\"",
            17,
            "service[0].health.path",
            "applies to http and https checks only",
            "set kind = \"http\"",
        ),
        (
            "interval = \"100ms\"",
            "interval = \"fast\"",
            13,
            "service[0].health.interval",
            "not a duration",
            "\"100ms\"",
        ),
        (
            "timeout = \"50ms\"",
            "timeout = \"200ms\"",
            14,
            "service[0].health.timeout",
            "at most the interval",
            "shorten the timeout",
        ),
        (
            "rise = 2",
            "rise = 0",
            15,
            "service[0].health.rise",
            "out of range",
            "from 1 to 100",
        ),
        (
            "\"301\"]",
            "\"601\"]",
            18,
            "service[0].health.expect_status[1]",
            "\"601\" is not a status",
            "200-399",
        ),
        (
            "min_healthy = 2",
            "min_healthy = 1.5",
            8,
            "service[0].min_healthy",
            "neither a backend count nor a fraction",
            "0.5",
        ),
        (
            "tier = 1",
            "tier = 16",
            29,
            "service[0].backend[1].tier",
            "tier 16 is out of range",
            "0 (primary) to 15",
        ),
        (
            "max_ejection = \"4s\"",
            "max_ejection = \"500ms\"",
            23,
            "service[0].passive.max_ejection",
            "shorter than base_ejection",
            "at least base_ejection",
        ),
        (
            "on_all_down = \"reject\"",
            "on_all_down = \"panic\"",
            9,
            "service[0].on_all_down",
            "unknown variant `panic`",
            "one of",
        ),
    ];
    for (from, to, line, field, problem, fix) in cases {
        assert!(CHECKED.contains(from), "{from}");
        fails(&CHECKED.replace(from, to), *line, field, problem, fix);
    }
}

#[test]
fn udp_and_https_check_errors() {
    let udp = CHECKED
        .replace("kind = \"http\"", "kind = \"udp\"")
        .replace("path = \"/healthz\"\n", "")
        .replace("expect_status = [\"200-299\", \"301\"]\n", "");
    fails(
        &udp,
        11,
        "service[0].health",
        "needs `send` and `expect`",
        "send = ",
    );
    let https = CHECKED.replace(
        "kind = \"http\"",
        "kind = \"https\"\nca_file = \"/nonexistent/ca.pem\"",
    );
    fails(
        &https,
        13,
        "service[0].health.ca_file",
        "cannot read /nonexistent/ca.pem",
        "PEM file",
    );
    let on_udp = CHECKED.replace(
        "vip = \"10.0.0.10:80\"",
        "vip = \"10.0.0.10:53\"\nprotocol = \"udp\"",
    );
    fails(
        &on_udp,
        12,
        "service[0].health.kind",
        "an http check on a UDP service",
        "kind = \"udp\"",
    );
}

#[test]
fn admin_settings_and_errors() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.admin.listen, Some(DEFAULT_ADMIN_LISTEN.parse().unwrap()));
    assert!(c.admin.tokens.is_empty());
    assert_eq!(
        c.admin.audit_log.as_deref(),
        Some(Path::new(DEFAULT_AUDIT_LOG))
    );
    let off = parse(&format!("{GOOD}\n[admin]\nlisten = \"off\"\n")).unwrap();
    assert_eq!(off.admin.listen, None);
    let lines = GOOD.lines().count();
    fails(
        &format!("{GOOD}\n[admin]\nlisten = \"localhost\"\n"),
        lines + 3,
        "admin.listen",
        "\"localhost\" is not an address with a port",
        "\"off\"",
    );
    fails(
        &format!("{GOOD}\n[admin]\ntoken_file = \"/nonexistent/token\"\n"),
        lines + 3,
        "admin.token_file",
        "cannot read /nonexistent/token",
        "readable file",
    );
    let token = std::env::temp_dir().join(format!("understudy-token-{}", std::process::id()));
    std::fs::write(&token, "  abc123\n").unwrap();
    let with = parse(&format!(
        "{GOOD}\n[admin]\ntoken_file = \"{}\"\n",
        token.display()
    ))
    .unwrap();
    assert_eq!(with.admin.tokens.len(), 1);
    assert_eq!(
        (
            with.admin.tokens[0].name.as_str(),
            with.admin.tokens[0].token.as_str()
        ),
        ("admin", "abc123")
    );
    std::fs::write(&token, "\n").unwrap();
    fails(
        &format!("{GOOD}\n[admin]\ntoken_file = \"{}\"\n", token.display()),
        lines + 3,
        "admin.token_file",
        "holds no usable token",
        "one token",
    );
    std::fs::remove_file(token).ok();
}

#[test]
fn named_admin_tokens_and_the_audit_log() {
    let dir = std::env::temp_dir().join(format!("understudy-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, token: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{token}\n")).unwrap();
        p.display().to_string()
    };
    let (alice, bot, same) = (
        file("a", "t-alice"),
        file("b", "t-bot"),
        file("c", "t-alice"),
    );
    let lines = GOOD.lines().count();
    let named = parse(&format!(
        "{GOOD}\n[admin]\naudit_log = \"/tmp/x/audit.log\"\n[[admin.tokens]]\nname = \"alice\"\nfile = \"{alice}\"\n[[admin.tokens]]\nname = \"deploy-bot\"\nfile = \"{bot}\"\n"
    ))
    .unwrap();
    let names: Vec<&str> = named.admin.tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["alice", "deploy-bot"]);
    assert_eq!(
        named.admin.audit_log.as_deref(),
        Some(Path::new("/tmp/x/audit.log"))
    );
    assert!(
        !format!("{:?}", named.admin).contains("t-alice"),
        "a token's value never shows in Debug"
    );
    fails(
        &format!(
            "{GOOD}\n[admin]\n[[admin.tokens]]\nname = \"alice\"\nfile = \"{alice}\"\n[[admin.tokens]]\nname = \"alice\"\nfile = \"{bot}\"\n"
        ),
        lines + 7,
        "admin.tokens[1].name",
        "a token named \"alice\" is already configured",
        "its own name",
    );
    fails(
        &format!(
            "{GOOD}\n[admin]\n[[admin.tokens]]\nname = \"alice\"\nfile = \"{alice}\"\n[[admin.tokens]]\nname = \"carol\"\nfile = \"{same}\"\n"
        ),
        lines + 8,
        "admin.tokens[1].file",
        "also the token of \"alice\"",
        "a token of its own",
    );
    fails(
        &format!("{GOOD}\n[admin]\naudit_log = \"audit.log\"\n"),
        lines + 3,
        "admin.audit_log",
        "not an absolute path",
        "\"off\"",
    );
    let off = parse(&format!("{GOOD}\n[admin]\naudit_log = \"off\"\n")).unwrap();
    assert_eq!(off.admin.audit_log, None);
    std::fs::remove_dir_all(dir).ok();
}

const HTTP: &str = r#"
[dataplane]
interfaces = ["veth0"]

[[service]]
name = "api"
vip = "10.0.0.10:80"
mode = "http"

[service.retry]
attempts = 2
per_try_timeout = "250ms"
on_status = [503]

[service.circuit]
consecutive_failures = 3

[[service.backend]]
address = "10.0.11.2:8080"
"#;

#[test]
fn accepts_an_http_service_with_defaults_filled() {
    let c = parse(HTTP).unwrap();
    let h = c.services[0].mode.http().expect("an HTTP service");
    assert_eq!(h.retry.attempts, 2);
    assert_eq!(
        h.retry.per_try_timeout,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(h.retry.on_status, vec![503]);
    assert_eq!(h.retry.deadline, RetryPolicy::default().deadline);
    assert_eq!(h.retry.budget_ratio, 0.2);
    assert_eq!(h.circuit.consecutive_failures, 3);
    assert_eq!(h.circuit.max_requests, 1024);
    assert!(h.tls.is_none() && h.attempt_header.is_none());
    assert!(
        parse(GOOD)
            .unwrap()
            .services
            .iter()
            .all(|s| s.mode == Mode::Nat)
    );
}

#[test]
fn http_errors_name_the_field() {
    fails(
        &HTTP.replace("on_status = [503]", "on_status = [503, 404]"),
        13,
        "service[0].retry.on_status",
        "404 is not a 5xx status",
        "5xx statuses only",
    );
    fails(
        &HTTP.replace("attempts = 2", "attempts = 0"),
        11,
        "service[0].retry.attempts",
        "0 is out of range",
        "from 1 to 10",
    );
    fails(
        &HTTP.replace("mode = \"http\"", "mode = \"nat\""),
        10,
        "service[0].retry",
        "[service.retry] applies to HTTP services only",
        "mode = \"http\"",
    );
    fails(
        &HTTP.replace("mode = \"http\"", "mode = \"http\"\nprotocol = \"udp\""),
        7,
        "service[0].protocol",
        "an HTTP service over UDP",
        "HTTP services are TCP",
    );
    fails(
        &HTTP.replace(
            "[service.retry]",
            "[service.tls]\ncertificates = [{ cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }]\n\n[service.retry]",
        ),
        11,
        "service[0].tls.certificates[0].cert",
        "cannot read /nonexistent.pem",
        "readable PEM file",
    );
}

/// Durations are bounded, so that `now + d` can never overflow an `Instant` (a 100-year deadline
/// used to panic a request), and zero timeouts are refused where they would fail everything.
#[test]
fn durations_are_bounded_and_zero_timeouts_refused() {
    fails(
        &HTTP.replace("per_try_timeout = \"250ms\"", "deadline = \"100years\""),
        12,
        "service[0].retry.deadline",
        "\"100years\" is longer than a day",
        "at most \"24h\"",
    );
    fails(
        &HTTP.replace(
            "mode = \"http\"",
            "mode = \"http\"\n\n[service.http]\nconnect_timeout = \"0s\"",
        ),
        11,
        "service[0].http.connect_timeout",
        "\"0s\" is zero",
        "positive duration",
    );
    fails(
        &HTTP.replace(
            "consecutive_failures = 3",
            "consecutive_failures = 3\nmax_ejection = \"36500days\"",
        ),
        17,
        "service[0].circuit.max_ejection",
        "longer than a day",
        "at most \"24h\"",
    );
    fails(
        &HTTP.replace(
            "mode = \"http\"",
            "mode = \"http\"\nhealth = { kind = \"tcp\", interval = \"0ms\" }",
        ),
        9,
        "service[0].health.interval",
        "is zero",
        "positive duration",
    );
    fails(
        &HTTP.replace(
            "consecutive_failures = 3",
            "consecutive_failures = 3\nfailure_statuses = [500, 404]",
        ),
        17,
        "service[0].circuit.failure_statuses",
        "404 is not a 5xx status",
        "5xx statuses only",
    );
    fails(
        &HTTP.replace(
            "mode = \"http\"",
            "mode = \"http\"\npassive = { max_ejection_percent = 101 }",
        ),
        9,
        "service[0].passive.max_ejection_percent",
        "more than 100 percent",
        "from 0 to 100",
    );
    // Zero still means "off" where it says so.
    let ok = HTTP.replace(
        "mode = \"http\"",
        "mode = \"http\"\npassive = { syn_timeout = \"0s\" }",
    );
    parse(&ok).unwrap();
}

#[test]
fn two_nat_services_may_not_share_a_backend_address() {
    let text = r#"
[dataplane]
interfaces = ["veth0"]

[[service]]
name = "a"
vip = "10.0.0.10:80"
[[service.backend]]
address = "10.0.11.2:8080"

[[service]]
name = "b"
vip = "10.0.0.11:80"
[[service.backend]]
address = "10.0.11.2:8080"
"#;
    fails(
        text,
        15,
        "service[1].backend[0].address",
        "already a backend of the NAT service \"a\"",
        "second port",
    );
    // Other protocols, other ports, and HTTP services may share it.
    parse(&text.replace("10.0.0.11:80\"", "10.0.0.11:80\"\nprotocol = \"udp\"")).unwrap();
    let at = text.rfind("8080").unwrap();
    parse(&format!("{}8081{}", &text[..at], &text[at + 4..])).unwrap();
    parse(&text.replace(
        "vip = \"10.0.0.11:80\"",
        "vip = \"10.0.0.11:80\"\nmode = \"http\"",
    ))
    .unwrap();
}

#[test]
fn max_flows_has_a_default_and_a_range() {
    let base = "[dataplane]\ninterfaces = [\"veth0\"]\n\n[[service]]\nname = \"a\"\nvip = \"10.0.0.10:80\"\n[[service.backend]]\naddress = \"10.0.11.2:8080\"\n";
    assert_eq!(parse(base).unwrap().max_flows, DEFAULT_MAX_FLOWS);
    let sized = base.replace("[\"veth0\"]\n", "[\"veth0\"]\nmax_flows = 4000000\n");
    assert_eq!(parse(&sized).unwrap().max_flows, 4_000_000);
    fails(
        &base.replace("[\"veth0\"]\n", "[\"veth0\"]\nmax_flows = 10\n"),
        3,
        "dataplane.max_flows",
        "10 is out of range",
        "from 1024 to 67108864",
    );
}

#[test]
fn writer_priority_has_a_default_and_a_range() {
    let base = "[dataplane]\ninterfaces = [\"veth0\"]\n\n[[service]]\nname = \"a\"\nvip = \"10.0.0.10:80\"\n[[service.backend]]\naddress = \"10.0.11.2:8080\"\n";
    assert_eq!(
        parse(base).unwrap().writer_priority,
        DEFAULT_WRITER_PRIORITY
    );
    let off = base.replace("[\"veth0\"]\n", "[\"veth0\"]\nwriter_priority = 0\n");
    assert_eq!(parse(&off).unwrap().writer_priority, 0);
    fails(
        &base.replace("[\"veth0\"]\n", "[\"veth0\"]\nwriter_priority = 120\n"),
        3,
        "dataplane.writer_priority",
        "120 is out of range",
        "from 1 to 99",
    );
}

mod edge;
mod forwarding;
mod gateway;
mod routes;

#[test]
fn announce_defaults_and_located_refusals() {
    use crate::config::AnnouncePolicy;
    let base = "[dataplane]\ninterfaces = [\"eth0\"]\n";
    let svc = "\n[[service]]\nname = \"web\"\nvip = \"10.0.0.10:80\"\nannounce = \"always\"\nbackend = [{ address = \"10.0.11.2:80\" }]\n";
    let c = parse(&format!("{base}{svc}")).unwrap();
    assert_eq!(c.announce, None, "no [announce], nothing announced");
    assert_eq!(c.services[0].announce, AnnouncePolicy::Always);
    let c = parse(&format!("{base}[announce]\n{svc}")).unwrap();
    let a = c.announce.unwrap();
    assert_eq!(a.socket, Path::new("/run/bird/bird.ctl"));
    assert_eq!(a.include, Path::new("/run/understudy/bird-vips.conf"));
    assert_eq!(a.grace, std::time::Duration::from_secs(3));
    fails(
        &format!("{base}[announce]\ninclude = \"vips.conf\"\n{svc}"),
        4,
        "announce.include",
        "not an absolute path",
        "absolute path",
    );
    fails(
        &format!("{base}[announce]\nspeaker_check = \"10ms\"\n{svc}"),
        4,
        "announce.speaker_check",
        "too short",
        "100ms",
    );
    let e = parse(&format!(
        "{base}{}",
        svc.replace("\"always\"", "\"sometimes\"")
    ))
    .unwrap_err();
    assert!(e.to_string().contains("when_available"), "{e}");
}
