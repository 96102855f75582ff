//! `[[pool]]` and `[[service.route]]`: pools shared by services, routes matched in order, and
//! every route or pool that cannot work refused where it is written.

use super::*;
use crate::config::{Failover, HostMatch, PathMatch};

const POOLS: &str = r#"[dataplane]
interfaces = ["eth0"]

[[pool]]
name = "primary"
[pool.health]
kind = "http"
path = "/healthz"
[[pool.backend]]
address = "10.0.11.2:8080"
[[pool.backend]]
address = "10.0.12.2:8080"
tier = 1

[[pool]]
name = "backup"
[[pool.backend]]
address = "[fd00::13:2]:8080"
"#;

fn with_service(routes: &str) -> String {
    format!(
        "{POOLS}\n[[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n{routes}"
    )
}

#[test]
fn pools_are_services_without_a_vip_and_routes_name_them() {
    let text = with_service(
        r#"
[[service.route]]
name = "v1"
host = "API.example.com"
path_prefix = "/v1/"
methods = ["get", "HEAD"]
headers = { "x-tenant" = "blue", "x-canary" = "*" }
pools = ["primary", "backup"]
[service.route.failover]
error_threshold = 0.3
latency_threshold = "250ms"
[service.route.rewrite.backup]
host = "backup.example.net"
prefix = "/api/v1/"
headers = { "x-fallback" = "1" }

[[service.route]]
host = "*.example.com"
path_regex = "/img/[a-z]+\\.png"
pools = ["backup"]
"#,
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<(&str, &Mode)> = c
        .services
        .iter()
        .map(|s| (s.name.as_str(), &s.mode))
        .collect();
    assert_eq!(
        names[1..],
        [("primary", &Mode::Pool), ("backup", &Mode::Pool)]
    );
    let primary = &c.services[1];
    assert_eq!(primary.backends[1].tier, 1);
    assert_eq!(primary.health.check.to_string(), "http");
    // A pool's backends may be of either family: the proxy connects to them.
    assert!(c.services[2].backends[0].address.is_ipv6());

    let http = c.services[0].mode.http().unwrap();
    let v1 = &http.routes[0];
    assert_eq!(v1.name, "v1");
    assert_eq!(
        v1.matcher.host,
        Some(HostMatch::Exact("api.example.com".into()))
    );
    assert_eq!(v1.matcher.path, Some(PathMatch::Prefix("/v1/".into())));
    assert_eq!(
        v1.matcher.methods,
        vec![hyper::Method::GET, hyper::Method::HEAD]
    );
    assert_eq!(v1.matcher.headers.len(), 2);
    let chain: Vec<&str> = v1.chain.iter().map(|p| p.pool.as_str()).collect();
    assert_eq!(chain, ["primary", "backup"]);
    assert_eq!(v1.chain[1].host.as_ref().unwrap(), "backup.example.net");
    assert_eq!(v1.chain[1].prefix.as_deref(), Some("/api/v1/"));
    assert_eq!(v1.chain[1].headers[0].0, "x-fallback");
    assert_eq!(
        v1.failover,
        Some(Failover {
            error_threshold: 0.3,
            latency_threshold: Some(std::time::Duration::from_millis(250)),
            latency_quantile: 0.9,
            min_requests: 20,
            window: std::time::Duration::from_secs(10),
            probe_ratio: 0.05,
            hold: std::time::Duration::from_secs(10),
        })
    );
    let second = &http.routes[1];
    assert_eq!(second.name, "route1");
    assert_eq!(
        second.matcher.host,
        Some(HostMatch::Below(".example.com".into()))
    );
    let Some(PathMatch::Regex(re)) = &second.matcher.path else {
        panic!("a regex")
    };
    assert!(
        re.is_match("/img/cat.png") && !re.is_match("/img/cat.png/x"),
        "anchored"
    );
}

#[test]
fn a_service_with_backends_and_no_route_keeps_its_single_pool() {
    let c = parse(&format!(
        "{POOLS}\n[[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n\
         [[service.backend]]\naddress = \"10.0.14.2:80\"\n"
    ))
    .unwrap();
    assert!(c.services[0].mode.http().unwrap().routes.is_empty());
    // ... and a route may name the service's own backends by the service's name.
    parse(&format!(
        "{POOLS}\n[[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n\
         [[service.route]]\npools = [\"api\", \"backup\"]\n[[service.backend]]\naddress = \"10.0.14.2:80\"\n"
    ))
    .unwrap();
}

#[test]
fn an_unknown_pool_is_refused_with_the_known_ones() {
    let text =
        with_service("[[service.route]]\npath_prefix = \"/\"\npools = [\"primary\", \"bakcup\"]\n");
    let line = text.lines().count();
    fails(
        &text,
        line,
        "service[0].route[0].pools",
        "no pool is named \"bakcup\"",
        "primary, backup",
    );
}

#[test]
fn a_route_an_earlier_one_covers_is_refused() {
    let text = with_service(
        "[[service.route]]\nname = \"all-api\"\npath_prefix = \"/api/\"\npools = [\"primary\"]\n\
         [[service.route]]\nname = \"api-v2\"\npath_prefix = \"/api/v2/\"\nmethods = [\"GET\"]\npools = [\"backup\"]\n",
    );
    let line = text.lines().position(|l| l.contains("api-v2")).unwrap(); // the table header's line
    let e = fails(
        &text,
        line,
        "service[0].route[1]",
        "route \"api-v2\" can never match",
        "more specific route first",
    );
    assert!(e.problem.contains("all-api"), "{e}");
    // The other way round is fine, and so are routes that differ by host.
    parse(&with_service(
        "[[service.route]]\npath_prefix = \"/api/v2/\"\npools = [\"backup\"]\n\
         [[service.route]]\npath_prefix = \"/api/\"\npools = [\"primary\"]\n\
         [[service.route]]\nhost = \"a.example.com\"\npools = [\"primary\"]\n\
         [[service.route]]\nhost = \"b.example.com\"\npools = [\"primary\"]\n",
    ))
    .unwrap();
}

#[test]
fn bad_routes_are_located() {
    let route = |body: &str| with_service(&format!("[[service.route]]\n{body}\n"));
    let last = |t: &str, needle: &str| t.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let t = route("path_regex = \"/(unclosed\"\npools = [\"primary\"]");
    fails(
        &t,
        last(&t, "path_regex"),
        "service[0].route[0].path_regex",
        "not a regular expression",
        "regex",
    );
    let t = route("path = \"/a\"\npath_prefix = \"/b\"\npools = [\"primary\"]");
    fails(
        &t,
        last(&t, "path_prefix"),
        "service[0].route[0].path_prefix",
        "one path condition",
        "keep one",
    );
    let t = route("path_prefix = \"api\"\npools = [\"primary\"]");
    fails(
        &t,
        last(&t, "path_prefix"),
        "service[0].route[0].path_prefix",
        "does not start with '/'",
        "/api/",
    );
    let t = route("methods = [\"G T\"]\npools = [\"primary\"]");
    fails(
        &t,
        last(&t, "methods"),
        "service[0].route[0].methods",
        "not an HTTP method",
        "GET",
    );
    let t = route("pools = [\"primary\"]\n[service.route.failover]\nerror_threshold = 0.5");
    fails(
        &t,
        last(&t, "failover]"),
        "service[0].route[0].failover",
        "has one pool",
        "backup pool",
    );
    let t =
        route("pools = [\"primary\", \"backup\"]\n[service.route.failover]\nerror_threshold = 1.5");
    fails(
        &t,
        last(&t, "error_threshold"),
        "service[0].route[0].failover.error_threshold",
        "not a fraction",
        "0.2",
    );
    let t = route("pools = [\"primary\"]\n[service.route.rewrite.backup]\nhost = \"b.example\"");
    fails(
        &t,
        last(&t, "rewrite.backup"),
        "service[0].route[0].rewrite.backup",
        "not in this route's pools",
        "chain",
    );
    let t = route(
        "path = \"/x\"\npools = [\"primary\"]\n[service.route.rewrite.primary]\nprefix = \"/y/\"",
    );
    fails(
        &t,
        last(&t, "prefix = "),
        "service[0].route[0].rewrite.primary.prefix",
        "no path_prefix",
        "path_prefix",
    );
    let t = route("pools = []");
    fails(
        &t,
        last(&t, "pools"),
        "service[0].route[0].pools",
        "names no pool",
        "primary first",
    );
    let t = route("pools = [\"primary\", \"primary\"]");
    fails(
        &t,
        last(&t, "pools"),
        "service[0].route[0].pools",
        "listed twice",
        "once",
    );
}

#[test]
fn pools_and_services_share_one_namespace_and_routes_need_http() {
    let text = format!(
        "{POOLS}\n[[service]]\nname = \"backup\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n[[service.backend]]\naddress = \"10.0.14.2:80\"\n"
    );
    let line = text
        .lines()
        .position(|l| l == "name = \"backup\"")
        .map(|_| text.lines().count() - 4)
        .unwrap();
    fails(
        &text,
        line,
        "service[0].name",
        "a [[pool]] is already named \"backup\"",
        "its own name",
    );

    let text = format!(
        "{POOLS}\n[[service]]\nname = \"tcp\"\nvip = \"10.0.0.10:80\"\n[[service.route]]\npools = [\"primary\"]\n[[service.backend]]\naddress = \"10.0.14.2:80\"\n"
    );
    let line = text.lines().position(|l| l == "[[service.route]]").unwrap() + 1;
    fails(
        &text,
        line,
        "service[0].route",
        "not an HTTP service",
        "mode = \"http\"",
    );

    // Own backends no route uses would be checked and never served.
    let text = with_service(
        "[[service.route]]\npools = [\"primary\"]\n[[service.backend]]\naddress = \"10.0.14.2:80\"\n",
    );
    let line = text.lines().count() - 1;
    fails(
        &text,
        line,
        "service[0].backend",
        "no route uses the service's own backends",
        "[[pool]]",
    );

    let text = format!("{POOLS}\n[[pool]]\nname = \"empty\"\n");
    let line = text.lines().count();
    fails(
        &text,
        line,
        "pool[2].backend",
        "pool \"empty\" has no backend",
        "[[pool.backend]]",
    );
}

#[test]
fn the_access_log_is_off_unless_enabled() {
    let base = "[dataplane]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n[[service.backend]]\naddress = \"10.0.14.2:80\"\n";
    let c = parse(base).unwrap();
    assert_eq!(c.services[0].mode.http().unwrap().access_log, None);
    let c = parse(&format!(
        "{base}[service.access_log]\nenabled = true\nfile = \"/var/log/a.log\"\nsample = 0.5\n"
    ))
    .unwrap();
    let log = c.services[0]
        .mode
        .http()
        .unwrap()
        .access_log
        .clone()
        .unwrap();
    assert_eq!(
        (log.file.unwrap().to_str().unwrap(), log.sample),
        ("/var/log/a.log", 0.5)
    );
    let t = format!("{base}[service.access_log]\nenabled = true\nsample = 0\n");
    fails(
        &t,
        t.lines().count(),
        "service[0].access_log.sample",
        "not a share",
        "0.01",
    );
}

#[test]
fn pools_say_what_their_backends_speak_and_h2_needs_upstream_tls() {
    let text = format!(
        "{POOLS}\n[[pool]]\nname = \"grpc\"\nprotocol = \"h2c\"\n[[pool.backend]]\naddress = \"10.0.15.2:50051\"\n\
         [[service]]\nname = \"api\"\nvip = \"10.0.0.10:80\"\nmode = \"http\"\n[[service.route]]\npools = [\"grpc\", \"backup\"]\n"
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let chain = &c.services[0].mode.http().unwrap().routes[0].chain;
    assert_eq!(
        chain.iter().map(|p| p.protocol).collect::<Vec<_>>(),
        [UpstreamProtocol::H2c, UpstreamProtocol::Http1]
    );
    let text = text.replace("protocol = \"h2c\"", "protocol = \"h2\"");
    let line = text.lines().position(|l| l == "name = \"api\"").unwrap() + 1;
    fails(
        &text,
        line,
        "service[0].upstream_tls",
        "pool \"grpc\" speaks h2",
        "h2c",
    );
    let t = with_service(
        "[service.retry]\ngrpc_status = [14, 99]\n[[service.route]]\npools = [\"primary\"]\n",
    );
    let line = t
        .lines()
        .position(|l| l.starts_with("grpc_status"))
        .unwrap()
        + 1;
    fails(
        &t,
        line,
        "service[0].retry.grpc_status",
        "99 is not a gRPC error status",
        "RESOURCE_EXHAUSTED",
    );
}
