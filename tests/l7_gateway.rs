//! Gateway policy against a real HTTP backend on loopback: authentication as a table of
//! requests (API keys, JWT with HS256 and ES256, Basic; missing, wrong, expired, early and
//! mis-addressed credentials), authorization by consumer and group, the credential stripped
//! and the consumer named as the backend sees them, and rate limits (429 with its headers, one
//! consumer's limit not touching another's, the refill, concurrency). The proxy is built from a
//! real config (keys as digests, a JWKS file) and served on a real socket.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Bytes, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::TcpListener;
use understudy::{
    config::Config,
    l7::{
        self, ServiceProxy,
        auth::Credentials,
        availability::{MemberView, PoolView, new_availability},
        metrics::L7Metrics,
    },
};

const HS_SECRET: &[u8] = b"a shared secret of the issuer, 32+ bytes long";
const ALICE_KEY: &str = "ak_alice_0123456789abcdef";
const BOB_KEY: &str = "ak_bob_0123456789abcdef";

fn sha256_hex(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The backend answers with what it saw of the credentials, the consumer and the path.
async fn backend(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map_or("-".to_string(), |v| v.to_str().unwrap().to_string())
                    };
                    let body = format!(
                        "authorization={} x-api-key={} x-consumer={} path={}",
                        h("authorization"),
                        h("x-api-key"),
                        h("x-consumer"),
                        req.uri().path_and_query().unwrap()
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Keys {
    es: rcgen::KeyPair,
    jwks: std::path::PathBuf,
}

/// An ES256 key pair and a JWKS file with its public half and the HS256 secret.
fn keys(tag: &str) -> Keys {
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = es.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    let jwks = serde_json::json!({"keys": [
        {"kty": "oct", "kid": "hs1", "alg": "HS256", "k": b64url(HS_SECRET)},
        {"kty": "EC", "kid": "es1", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..])},
    ]});
    let path = std::env::temp_dir().join(format!(
        "understudy-gw-{tag}-{}.jwks.json",
        std::process::id()
    ));
    std::fs::write(&path, jwks.to_string()).unwrap();
    Keys { es, jwks: path }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with these claims over the defaults (sub alice, aud orders, iss, an hour to live).
fn token(keys: &Keys, alg: Algorithm, claims: serde_json::Value) -> String {
    let mut c = serde_json::json!({
        "sub": "alice", "aud": "orders", "iss": "https://id.example.com",
        "exp": now() + 3600, "nbf": now() - 10,
    });
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    let (mut header, key) = match alg {
        Algorithm::HS256 => (Header::new(alg), EncodingKey::from_secret(HS_SECRET)),
        Algorithm::ES256 => (
            Header::new(alg),
            EncodingKey::from_ec_der(&keys.es.serialize_der()),
        ),
        _ => unreachable!(),
    };
    header.kid = Some(
        if alg == Algorithm::HS256 {
            "hs1"
        } else {
            "es1"
        }
        .into(),
    );
    jsonwebtoken::encode(&header, &c, &key).unwrap()
}

struct Proxy {
    addr: SocketAddr,
    metrics: L7Metrics,
}

impl Proxy {
    fn metrics_text(&self) -> String {
        let mut r = prometheus_client::registry::Registry::with_prefix("understudy");
        self.metrics.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }
}

async fn proxy(keys: &Keys, backend: SocketAddr, routes: &str) -> Proxy {
    let text = format!(
        r#"[dataplane]
interfaces = ["lo"]

[gateway]
api_key_query = "api_key"
[gateway.jwt]
jwks_file = "{jwks}"
issuer = ["https://id.example.com"]
audience = ["orders"]
leeway = "30s"

[[consumer]]
name = "alice"
groups = ["partners"]
api_keys = ["sha256:{alice}"]
basic_password = "sha256:{alice_pw}"

[[consumer]]
name = "bob"
api_keys = ["sha256:{bob}"]

[[service]]
name = "web"
vip = "127.0.0.1:1"
mode = "http"
{routes}

[[pool]]
name = "api"
[[pool.backend]]
address = "{backend}"
"#,
        jwks = keys.jwks.display(),
        alice = sha256_hex(ALICE_KEY),
        alice_pw = sha256_hex("alice's long random password"),
        bob = sha256_hex(BOB_KEY),
    );
    let config = Config::parse(std::path::Path::new("gateway-test.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let availability = new_availability();
    let pool = config.services.iter().find(|s| s.name == "api").unwrap();
    let members = pool
        .backends
        .iter()
        .map(|b| MemberView::new(b.address, b.tier, b.weight, true, true))
        .collect();
    availability
        .write()
        .unwrap()
        .insert("api".into(), Arc::new(PoolView::new(members)));
    let metrics = L7Metrics::default();
    let service = ServiceProxy::new(
        &config.services[0],
        availability,
        None,
        None,
        metrics.clone(),
        &Arc::new(Credentials::new(&config.gateway)),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let current: l7::Current = Arc::new(ArcSwap::from_pointee(service));
    tokio::spawn(l7::serve(listener, current));
    Proxy { addr, metrics }
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

async fn send(c: &TestClient, p: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://{}{path}", p.addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("the proxy answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn authentication_as_a_table_of_requests() {
    let k = keys("table");
    let be = backend(Duration::ZERO).await;
    let p = proxy(
        &k,
        be,
        r#"
[[service.route]]
name = "partners"
path_prefix = "/partners/"
pools = ["api"]
auth = ["jwt", "api_key", "basic"]
allow = ["group:partners"]
consumer_header = "x-consumer"
[[service.route]]
name = "public"
pools = ["api"]
"#,
    )
    .await;
    let c = client();
    let bearer = |t: String| format!("Bearer {t}");
    let hs = |claims| bearer(token(&k, Algorithm::HS256, claims));
    let basic = |user: &str, pw: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let mut forged = token(&k, Algorithm::HS256, serde_json::json!({}));
    forged.push_str("AA"); // the signature no longer verifies
    let other_secret = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("hs1".into());
        let claims = serde_json::json!({"sub": "alice", "aud": "orders", "iss": "https://id.example.com", "exp": now() + 3600});
        bearer(
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"not the secret"))
                .unwrap(),
        )
    };
    // (what, path, headers, expected status, what the backend or the body says)
    type Row<'a> = (&'a str, String, Vec<(&'a str, String)>, u16, &'a str);
    let table: Vec<Row<'_>> = vec![
        (
            "no credential",
            "/partners/a".into(),
            vec![],
            401,
            "authentication required",
        ),
        (
            "wrong API key",
            "/partners/a".into(),
            vec![("x-api-key", "ak_guess".into())],
            401,
            "API key is not known",
        ),
        (
            "bad JWT signature",
            "/partners/a".into(),
            vec![("authorization", other_secret)],
            401,
            "signature does not verify",
        ),
        (
            "corrupted JWT",
            "/partners/a".into(),
            vec![("authorization", bearer(forged))],
            401,
            "jwt refused",
        ),
        (
            "expired JWT",
            "/partners/a".into(),
            vec![("authorization", hs(serde_json::json!({"exp": now() - 120})))],
            401,
            "expired",
        ),
        (
            "JWT not yet valid",
            "/partners/a".into(),
            vec![("authorization", hs(serde_json::json!({"nbf": now() + 600})))],
            401,
            "not valid yet",
        ),
        (
            "JWT for another audience",
            "/partners/a".into(),
            vec![("authorization", hs(serde_json::json!({"aud": "billing"})))],
            401,
            "another audience",
        ),
        (
            "JWT from another issuer",
            "/partners/a".into(),
            vec![(
                "authorization",
                hs(serde_json::json!({"iss": "https://evil.example"})),
            )],
            401,
            "another issuer",
        ),
        (
            "wrong Basic password",
            "/partners/a".into(),
            vec![("authorization", basic("alice", "guess"))],
            401,
            "user name or password is wrong",
        ),
        (
            "valid JWT, consumer outside the group",
            "/partners/a".into(),
            vec![("authorization", hs(serde_json::json!({"sub": "bob"})))],
            403,
            "consumer bob may not use this route",
        ),
        (
            "valid API key, consumer outside the group",
            "/partners/a".into(),
            vec![("x-api-key", BOB_KEY.into())],
            403,
            "consumer bob",
        ),
        (
            "JWT within the leeway",
            "/partners/a".into(),
            vec![("authorization", hs(serde_json::json!({"exp": now() - 5})))],
            200,
            "authorization=- x-api-key=- x-consumer=alice path=/partners/a",
        ),
        (
            "valid HS256 JWT",
            "/partners/a".into(),
            vec![("authorization", hs(serde_json::json!({})))],
            200,
            "authorization=- x-api-key=- x-consumer=alice path=/partners/a",
        ),
        (
            "valid ES256 JWT",
            "/partners/b".into(),
            vec![(
                "authorization",
                bearer(token(&k, Algorithm::ES256, serde_json::json!({}))),
            )],
            200,
            "x-consumer=alice path=/partners/b",
        ),
        (
            "valid API key in the header",
            "/partners/c".into(),
            vec![("x-api-key", ALICE_KEY.into())],
            200,
            "authorization=- x-api-key=- x-consumer=alice path=/partners/c",
        ),
        (
            "valid API key in the query",
            format!("/partners/d?x=1&api_key={ALICE_KEY}&y=2"),
            vec![],
            200,
            "x-consumer=alice path=/partners/d?x=1&y=2",
        ),
        (
            "valid Basic",
            "/partners/e".into(),
            vec![(
                "authorization",
                basic("alice", "alice's long random password"),
            )],
            200,
            "authorization=- x-api-key=- x-consumer=alice",
        ),
        (
            "a client naming itself is overwritten",
            "/partners/f".into(),
            vec![
                ("x-api-key", ALICE_KEY.into()),
                ("x-consumer", "root".into()),
            ],
            200,
            "x-consumer=alice",
        ),
        (
            "anonymous on a route without auth",
            "/other".into(),
            vec![("x-consumer", "root".into())],
            200,
            "x-consumer=root path=/other",
        ),
    ];
    for (case, path, headers, status, expect) in &table {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = send(&c, &p, path, &h).await;
        assert_eq!(a.status, *status, "{case}: {}", a.body);
        assert!(
            a.body.contains(expect),
            "{case}: {:?} lacks {expect:?}",
            a.body
        );
        for (_, v) in headers {
            if a.status != 200 && v.len() > 8 {
                let secret = v.rsplit(' ').next().unwrap();
                assert!(
                    !a.body.contains(secret),
                    "{case}: the body echoes the credential"
                );
            }
        }
        if a.status == 401 {
            let challenges: Vec<_> = a
                .headers
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            assert_eq!(
                challenges,
                [
                    "Bearer realm=\"understudy\"",
                    "ApiKey realm=\"understudy\", header=\"x-api-key\"",
                    "Basic realm=\"understudy\""
                ],
                "{case}"
            );
        }
    }
    let m = p.metrics_text();
    assert!(
        m.contains(r#"understudy_http_filter_refusals_total{service="web",route="partners",consumer="-",filter="auth",code="401"} 9"#),
        "{m}"
    );
    assert!(
        m.contains(r#"understudy_http_filter_refusals_total{service="web",route="partners",consumer="-",filter="auth",code="403"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_consumer_over_its_rate_gets_429_and_others_do_not() {
    let k = keys("rate");
    let be = backend(Duration::ZERO).await;
    let p = proxy(
        &k,
        be,
        r#"
[[service.route]]
name = "orders"
pools = ["api"]
auth = ["api_key"]
[service.route.rate_limit]
rate = 2
burst = 3
"#,
    )
    .await;
    let c = client();
    let alice = [("x-api-key", ALICE_KEY)];
    for i in 0..3 {
        assert_eq!(send(&c, &p, "/", &alice).await.status, 200, "request {i}");
    }
    let over = send(&c, &p, "/", &alice).await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert!(over.body.contains("rate limited"), "{}", over.body);
    assert_eq!(over.headers["retry-after"], "1");
    assert_eq!(over.headers["ratelimit-policy"], "\"web/orders\";q=3;w=2");
    assert_eq!(over.headers["ratelimit"], "\"web/orders\";r=0;t=1");
    // Bob has a bucket of his own.
    assert_eq!(
        send(&c, &p, "/", &[("x-api-key", BOB_KEY)]).await.status,
        200
    );
    // A token every 500 ms: after 700 ms (tolerance for a busy machine: up to 1.5 s) one more
    // request passes, and the next is refused again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(send(&c, &p, "/", &alice).await.status, 200, "refilled");
    let m = p.metrics_text();
    assert!(
        m.contains(r#"understudy_http_filter_refusals_total{service="web",route="orders",consumer="alice",filter="rate_limit",code="429"} 1"#),
        "{m}"
    );
    // Unauthenticated requests are refused before the limit, and spend none of it.
    for _ in 0..5 {
        assert_eq!(send(&c, &p, "/", &[]).await.status, 401);
    }
}

#[tokio::test]
async fn concurrent_requests_over_the_limit_are_refused_until_one_ends() {
    let k = keys("conc");
    let be = backend(Duration::from_millis(400)).await;
    let p = proxy(
        &k,
        be,
        r#"
[[service.route]]
name = "slow"
pools = ["api"]
[service.route.rate_limit]
concurrent = 1
"#,
    )
    .await;
    let c = client();
    let first = {
        let (c, p) = (
            c.clone(),
            Proxy {
                addr: p.addr,
                metrics: p.metrics.clone(),
            },
        );
        tokio::spawn(async move { send(&c, &p, "/", &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = send(&c, &p, "/", &[]).await;
    assert_eq!(second.status, 429, "{}", second.body);
    assert!(second.body.contains("in progress"), "{}", second.body);
    assert_eq!(first.await.unwrap(), 200);
    // The slot came back with the first response's end.
    assert_eq!(send(&c, &p, "/", &[]).await.status, 200);
}
