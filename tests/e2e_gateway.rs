//! End to end, gateway policy in the real daemon: an HTTP route that takes JWT bearer tokens
//! whose JWKS file is rotated by a reload (a broken file leaves the old keys in force), and the
//! audit log: exactly one record per admin action and reload, accepted, refused or invalid,
//! naming the token's holder; reopened on SIGUSR1 after a move (logrotate); and whole on disk
//! after a `kill -9` right after an action.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use base64::Engine as _;
use understudy_testbed::{Daemon, HttpBackend, Topology, admin, cli, require_root};

const BIN: &str = env!("CARGO_BIN_EXE_understudy");
const ISSUER: &str = "https://id.example.com";

fn jwks(kid: &str, secret: &[u8]) -> String {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    format!(r#"{{"keys": [{{"kty": "oct", "kid": "{kid}", "alg": "HS256", "k": "{k}"}}]}}"#)
}

fn token(kid: &str, secret: &[u8], sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    let claims = serde_json::json!({"sub": sub, "iss": ISSUER, "exp": now + 600, "nbf": now - 5});
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// GET `/orders` with `bearer`, on its own connection: the status and the body.
fn get(to: SocketAddr, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET /orders HTTP/1.1\r\nHost: api.example\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

/// A POST to the admin listener as a web page's script would send it: the token, and an
/// `Origin` of another site.
fn post_from_a_page(token: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect("127.0.0.1:9180").expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:9180\r\nOrigin: http://evil.example\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: a torn record {l:?}")))
        .collect()
}

fn wait_for_records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = records(path);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every `understudy_*` metric name in a rules file or dashboard.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("understudy_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn jwks_rotates_on_reload_and_every_admin_action_leaves_one_audit_record() {
    require_root("the gateway end-to-end test");
    let topo = Topology::build(1);
    let _backends = HttpBackend::on_every_backend(&topo);
    topo.lb.ip(&["addr", "add", "10.0.0.10/32", "dev", "lo"]);
    let dir = std::env::temp_dir().join(format!("{}-gateway", topo.lb.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (old_secret, new_secret) = (
        b"the first secret of the issuer!!",
        b"the second one, after rotation!!",
    );
    let jwks_file = file("jwks.json", &jwks("k1", old_secret));
    let alice = file("alice.token", "token-of-alice\n");
    let alice_file = alice.clone();
    let bob = file("bob.token", "token-of-bob\n");
    let audit = dir.join("log/audit.log");
    let config = file(
        "understudy.toml",
        &format!(
            r#"{dataplane}
[admin]
audit_log = "{audit}"
[[admin.tokens]]
name = "alice"
file = "{alice}"
[[admin.tokens]]
name = "bob"
file = "{bob}"

[gateway.jwt]
jwks_file = "jwks.json"
issuer = ["{ISSUER}"]

[[service]]
name = "api"
vip = "10.0.0.10:80"
mode = "http"
[service.health]
kind = "http"
interval = "200ms"
[[service.backend]]
address = "{be1}:8080"

[[service.route]]
name = "orders"
path_prefix = "/"
pools = ["api"]
auth = ["jwt"]

# A kernel service beside it, so /metrics has every family the dashboard reads.
[[service]]
name = "tcp"
vip = "10.0.0.11:80"
[[service.backend]]
address = "{be1}:8080"
"#,
            dataplane = topo.dataplane_toml(),
            audit = audit.display(),
            alice = alice.display(),
            bob = bob.display(),
            be1 = topo.backend_addr(1, false),
        ),
    );
    let daemon = Daemon::start(&topo.lb, BIN.as_ref(), &config);
    let vip: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let first = token("k1", old_secret, "mobile-app");
    let second = token("k2", new_secret, "mobile-app");
    let deadline = Instant::now() + Duration::from_secs(10);
    while topo.client.enter(|| get(vip, Some(&first))).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the backend never served:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(topo.client.enter(|| get(vip, None)).0, 401);
    let (alice, bob) = (Some("token-of-alice"), Some("token-of-bob"));

    // Rotation: the new key set replaces the old on reload.
    std::fs::write(&jwks_file, jwks("k2", new_secret)).unwrap();
    let (code, body) = admin(&topo.lb, alice, "POST", "/reload");
    assert_eq!(code, 200, "{body}");
    assert_eq!(topo.client.enter(|| get(vip, Some(&first))).0, 401);
    assert_eq!(topo.client.enter(|| get(vip, Some(&second))).0, 200);

    // A broken key set refuses the reload, names its file, and the keys in force stay.
    std::fs::write(&jwks_file, "{\"keys\": [").unwrap();
    let (code, body) = admin(&topo.lb, alice, "POST", "/reload");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("jwks.json"), "{body}");
    assert_eq!(topo.client.enter(|| get(vip, Some(&second))).0, 200);
    std::fs::write(&jwks_file, jwks("k2", new_secret)).unwrap();

    // /status and `understudy status` show the route's policy and its refusals, no secret.
    let (code, body) = admin(&topo.lb, alice, "GET", "/status");
    assert_eq!(code, 200, "{body}");
    let snap: understudy::status::Snapshot = serde_json::from_str(&body).unwrap();
    let route = &snap.services[0].routes[0];
    assert_eq!(
        (route.name.as_str(), route.auth.as_str()),
        ("orders", "jwt")
    );
    assert_eq!(route.rate_limit, None);
    // Counted since the route was loaded, that is since the reload: the old key's 401.
    assert_eq!(route.refused, 1);
    let (ok, table, err) = cli(
        BIN,
        &topo.lb,
        &["status", "--token-file", &alice_file.display().to_string()],
    );
    assert!(ok, "{err}");
    let row = table
        .lines()
        .find(|l| l.starts_with("orders"))
        .unwrap_or_else(|| panic!("no route row in:\n{table}"));
    assert!(row.contains(" jwt "), "{row}");

    // Every metric the shipped alert rules and dashboard name is one this daemon serves.
    let (code, body) = admin(&topo.lb, alice, "GET", "/metrics");
    assert_eq!(code, 200, "{body}");
    // Every metric the shipped alert rules and dashboard name is one this daemon serves.
    let served: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for file in ["understudy-alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging")
                .join(file),
        )
        .unwrap();
        let named = metric_names(&text);
        assert!(named.len() >= 8, "{file} names only {named:?}");
        for name in named {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| served.contains(f)))
                .unwrap_or(&name);
            assert!(
                served.contains(family),
                "{file} names {name}, which /metrics does not serve"
            );
        }
    }

    // Every kind of admin action, accepted, invalid and refused.
    let be = format!("{}:8080", topo.backend_addr(1, false));
    let drain = format!("/drain?service=api&backend={be}");
    let enable = format!("/enable?service=api&backend={be}");
    assert_eq!(admin(&topo.lb, bob, "POST", &drain).0, 200);
    assert_eq!(admin(&topo.lb, bob, "POST", &enable).0, 200);
    let unknown = "/drain?service=api&backend=10.9.9.9:1";
    assert_eq!(admin(&topo.lb, alice, "POST", unknown).0, 404);
    assert_eq!(admin(&topo.lb, Some("stolen"), "POST", &drain).0, 401);
    assert_eq!(
        topo.lb.enter(|| post_from_a_page("token-of-alice", &drain)),
        403
    );
    assert_eq!(admin(&topo.lb, alice, "POST", "/node/drain").0, 409);
    // Reads are not actions.
    assert_eq!(admin(&topo.lb, alice, "GET", "/status").0, 200);
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };

    let got = wait_for_records(&audit, 9);
    let line = |r: &serde_json::Value| {
        (
            r["action"].as_str().unwrap().to_string(),
            r["result"].as_str().unwrap().to_string(),
            r["caller"]["token"].as_str().unwrap_or("-").to_string(),
            r["status"].as_u64().unwrap_or(0),
        )
    };
    let summary: Vec<(String, String, String, u64)> = got.iter().map(line).collect();
    let want: Vec<(String, String, String, u64)> = [
        ("reload", "ok", "alice", 200),
        ("reload", "invalid", "alice", 422),
        ("drain", "ok", "bob", 200),
        ("enable", "ok", "bob", 200),
        ("drain", "invalid", "alice", 404),
        ("drain", "refused", "-", 401),
        ("drain", "refused", "alice", 403),
        ("node_drain", "invalid", "alice", 409),
        ("reload", "ok", "-", 0),
    ]
    .iter()
    .map(|(a, r, t, s)| (a.to_string(), r.to_string(), t.to_string(), *s))
    .collect();
    assert_eq!(summary, want, "{got:#?}");
    // The fields of a few: the reload's changes, the drain's target, the peer, the time.
    assert_eq!(got[0]["changes"]["jwt_keys_changed"], true, "{:#}", got[0]);
    assert!(got[1]["detail"].as_str().unwrap().contains("jwks.json"));
    assert_eq!(got[2]["target"]["service"], "api");
    assert_eq!(got[2]["target"]["backend"], be.as_str());
    assert!(
        got[2]["caller"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{:#}",
        got[2]
    );
    assert_eq!(got[8]["caller"]["via"], "signal");
    assert!(got[8]["caller"]["peer"].is_null());
    for r in &got {
        let t = r["time"].as_str().unwrap();
        humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("time {t}: {e}"));
        assert!(!r.to_string().contains("token-of-"), "a secret in {r}");
    }

    // logrotate moves the file and sends SIGUSR1: records go to a new file.
    let moved = dir.join("log/audit.log.1");
    std::fs::rename(&audit, &moved).unwrap();
    // Every reload above reopened the log too: wait for this signal's line, not an old one.
    let reopened = daemon.lines_with("audit log reopened");
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGUSR1) };
    daemon.wait_for_another_line("audit log reopened", reopened, Duration::from_secs(5));
    assert_eq!(admin(&topo.lb, bob, "POST", &drain).0, 200);
    assert_eq!(records(&moved).len(), 9, "the moved file is left alone");
    let new = records(&audit);
    assert_eq!(new.len(), 1);
    assert_eq!(
        (new[0]["action"].as_str(), new[0]["result"].as_str()),
        (Some("drain"), Some("ok"))
    );

    // The answer comes after the record is on disk: a kill -9 right after it loses nothing.
    assert_eq!(admin(&topo.lb, bob, "POST", &enable).0, 200);
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    let after = records(&audit);
    assert_eq!(after.len(), 2);
    assert_eq!(after[1]["action"], "enable");
    assert_eq!(after[1]["caller"]["token"], "bob");
    drop(daemon);
    std::fs::remove_dir_all(&dir).ok();
}
