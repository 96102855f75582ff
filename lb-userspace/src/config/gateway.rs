//! Gateway policy (`[gateway]`, `[[consumer]]`, and per route `auth`, `allow` and
//! `rate_limit`): who the callers are, how they prove it, and how fast they may call. The
//! model is Kong's and APISIX's consumers with credentials, and Envoy's `jwt_authn` providers.
//!
//! - A **consumer** is a named caller with groups and credentials: API keys and an HTTP Basic
//!   password, stored only as SHA-256 digests (`"sha256:<64 hex>"`, as `sha256sum` prints), in
//!   the config or in `[gateway] consumers_file`. A JWT names its consumer in a claim (`sub` by
//!   default); a consumer a token names need not be declared, unless a route's `allow` names it.
//! - **JWT** tokens are checked against the keys of one JWKS file (`[gateway.jwt]`): signature
//!   (HS256, RS256, ES256), `exp` and `nbf` with a leeway, `iss` and `aud` when configured.
//! - The keys file and the JWKS file are read with the config, so a reload (SIGHUP or
//!   `understudy reload`) re-reads them under the same rule: a file that does not validate
//!   refuses the whole reload, with its own file, line and fix, and the old keys stay in force.
//!
//! SHA-256 rather than a password hash such as argon2: the digest is checked on every request,
//! and argon2 costs milliseconds by design. API keys and Basic passwords are therefore meant to
//! be long random secrets (`openssl rand -hex 32`), for which a fast digest is as safe as a slow
//! one; the README says so.

use std::{path::PathBuf, time::Duration};

use hyper::http::HeaderName;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
};
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, error::Locator, health::duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// The request header an API key is carried in. Default "x-api-key".
    pub api_key_header: Option<Spanned<String>>,
    /// A query parameter an API key may be carried in instead; none by default.
    pub api_key_query: Option<Spanned<String>>,
    /// A TOML file of more `[[consumer]]` tables, re-read on every reload.
    pub consumers_file: Option<Spanned<String>>,
    pub jwt: Option<Spanned<RawJwt>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub jwks_file: Spanned<String>,
    pub issuer: Option<Vec<Spanned<String>>>,
    pub audience: Option<Vec<Spanned<String>>>,
    pub leeway: Option<Spanned<String>>,
    pub consumer_claim: Option<Spanned<String>>,
    pub algorithms: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub name: Spanned<String>,
    pub groups: Option<Vec<Spanned<String>>>,
    /// SHA-256 digests of the consumer's API keys.
    pub api_keys: Option<Vec<Spanned<String>>>,
    /// The SHA-256 digest of the consumer's HTTP Basic password (the user name is `name`).
    pub basic_password: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumersFile {
    #[serde(default, rename = "consumer")]
    consumers: Vec<Spanned<RawConsumer>>,
}

/// A route's `rate_limit` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteLimit {
    /// Requests per second (may be fractional: 0.5 is one every two seconds).
    pub rate: Option<Spanned<f64>>,
    /// Requests admitted at once after a quiet spell. Default: one second's worth (at least 1).
    pub burst: Option<Spanned<u32>>,
    /// "consumer" (each consumer its own bucket; anonymous callers one per client address) or
    /// "route" (one bucket for everyone). Default "consumer".
    pub per: Option<Spanned<String>>,
    /// Requests in progress at once, per the same key.
    pub concurrent: Option<Spanned<u32>>,
}

/// `[gateway]` and the consumers, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub api_key_header: HeaderName,
    pub api_key_query: Option<String>,
    pub jwt: Option<Jwt>,
    pub consumers: Vec<Consumer>,
}

impl Default for Gateway {
    fn default() -> Gateway {
        Gateway {
            api_key_header: HeaderName::from_static("x-api-key"),
            api_key_query: None,
            jwt: None,
            consumers: Vec::new(),
        }
    }
}

/// `[gateway.jwt]`: one token issuer and the keys its tokens are signed with.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub jwks_file: PathBuf,
    /// Every key of the JWKS file, each known to convert into a decoding key, with the
    /// algorithm it verifies.
    pub keys: Vec<(Jwk, Algorithm)>,
    /// Accepted `iss` values; empty: not checked.
    pub issuer: Vec<String>,
    /// Accepted `aud` values (a token must carry one); empty: not checked.
    pub audience: Vec<String>,
    /// Allowed clock skew for `exp` and `nbf`. Default 30 s.
    pub leeway: Duration,
    /// The claim whose string value names the consumer. Default "sub".
    pub consumer_claim: String,
    pub algorithms: Vec<Algorithm>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    pub groups: Vec<String>,
    pub api_keys: Vec<[u8; 32]>,
    pub basic_password: Option<[u8; 32]>,
}

/// How a caller may prove who it is on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Basic,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Basic => "basic",
        }
    }
}

/// One entry of a route's `allow` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    Consumer(String),
    /// Written "group:NAME".
    Group(String),
}

impl std::fmt::Display for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allow::Consumer(c) => f.write_str(c),
            Allow::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// Whose bucket a request is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPer {
    Consumer,
    Route,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteLimit {
    /// Requests per second and burst; `None`: only `concurrent` is limited.
    pub rate: Option<(f64, u32)>,
    pub per: LimitPer,
    pub concurrent: Option<u32>,
}

/// A route's policy: who may call it and how fast. The default lets everyone through.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    /// Tried in this order; empty: no authentication.
    pub auth: Vec<AuthMethod>,
    /// Empty: any authenticated consumer.
    pub allow: Vec<Allow>,
    /// Forward the credential to the backends; by default it is removed.
    pub pass_credentials: bool,
    /// A header the consumer's name is forwarded in (replacing any the client sent).
    pub consumer_header: Option<HeaderName>,
    pub rate_limit: Option<RouteLimit>,
}

impl Policy {
    /// Who may call, as `/status` shows it (never a secret): "none", or the methods and the
    /// allow list, such as "jwt, api_key; allow alice, group:partners".
    pub fn auth_text(&self) -> String {
        if self.auth.is_empty() {
            return "none".into();
        }
        let methods: Vec<&str> = self.auth.iter().map(|m| m.as_str()).collect();
        let mut s = methods.join(", ");
        if !self.allow.is_empty() {
            let allow: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
            s.push_str("; allow ");
            s.push_str(&allow.join(", "));
        }
        s
    }

    /// The route's limit as `/status` shows it, such as "10/s burst 20 per consumer, 4 at once".
    pub fn limit_text(&self) -> Option<String> {
        let l = self.rate_limit.as_ref()?;
        let per = match l.per {
            LimitPer::Consumer => "per consumer",
            LimitPer::Route => "per route",
        };
        let mut parts = Vec::new();
        if let Some((rate, burst)) = l.rate {
            parts.push(format!("{rate}/s burst {burst}"));
        }
        if let Some(c) = l.concurrent {
            parts.push(format!("{c} at once"));
        }
        Some(format!("{} {per}", parts.join(", ")))
    }
}

/// The policy fields of a `[[service.route]]`.
pub struct RawPolicy<'a> {
    pub auth: &'a Option<Spanned<toml::Value>>,
    pub allow: &'a Option<Vec<Spanned<String>>>,
    pub pass_credentials: Option<bool>,
    pub consumer_header: &'a Option<Spanned<String>>,
    pub rate_limit: &'a Option<Spanned<RawRouteLimit>>,
}

/// Parses a `"sha256:<hex>"` digest.
fn digest(at: &Locator<'_>, raw: &Spanned<String>, field: &str) -> Result<[u8; 32], ConfigError> {
    let bad = || {
        at.error(
            Some(raw.span()),
            field,
            "not a SHA-256 digest (the secret itself is never stored in the config)",
            "write \"sha256:\" and the 64 hex digits that `printf %s \"$KEY\" | sha256sum` prints",
        )
    };
    let hex = raw.get_ref().strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A consumer's, group's or admin token's name: letters, digits, '-', '_', '.' and '@'.
pub(super) fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

fn consumers(
    at: &Locator<'_>,
    raw: &[Spanned<RawConsumer>],
    out: &mut Vec<Consumer>,
    from_file: bool,
) -> Result<(), ConfigError> {
    for (i, c) in raw.iter().enumerate() {
        let c = c.get_ref();
        let f = |name: &str| format!("consumer[{i}].{name}");
        let name = c.name.get_ref();
        if !name_ok(name) {
            return Err(at.error(
                Some(c.name.span()),
                f("name"),
                format!("\"{name}\" is not a valid consumer name"),
                "use letters, digits, '-', '_', '.' and '@' only, such as \"billing-app\"",
            ));
        }
        if out.iter().any(|e| &e.name == name) {
            return Err(at.error(
                Some(c.name.span()),
                f("name"),
                format!(
                    "a consumer named \"{name}\" is already declared{}",
                    if from_file {
                        " (in the config or earlier in this file)"
                    } else {
                        ""
                    }
                ),
                "give every consumer its own name, and list all its keys under one [[consumer]]",
            ));
        }
        let mut groups = Vec::new();
        for g in c.groups.iter().flatten() {
            if !name_ok(g.get_ref()) {
                return Err(at.error(
                    Some(g.span()),
                    f("groups"),
                    format!("\"{}\" is not a valid group name", g.get_ref()),
                    "use letters, digits, '-', '_', '.' and '@' only, such as \"partners\"",
                ));
            }
            groups.push(g.get_ref().clone());
        }
        let mut api_keys = Vec::new();
        for k in c.api_keys.iter().flatten() {
            let d = digest(at, k, &f("api_keys"))?;
            if let Some(other) = out.iter().find(|e| e.api_keys.contains(&d)) {
                return Err(at.error(
                    Some(k.span()),
                    f("api_keys"),
                    format!("consumer \"{}\" already has this key", other.name),
                    "give every consumer keys of its own",
                ));
            }
            api_keys.push(d);
        }
        let basic_password = match &c.basic_password {
            None => None,
            Some(p) => Some(digest(at, p, &f("basic_password"))?),
        };
        out.push(Consumer {
            name: name.clone(),
            groups,
            api_keys,
            basic_password,
        });
    }
    Ok(())
}

fn algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

/// The algorithm a JWK verifies: its `alg`, or what its key type implies.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        _ => return Err("only RSA, EC P-256 and symmetric (oct) keys are supported".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Ok(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Ok(implied),
        Some(KeyAlgorithm::HS256) if implied == Algorithm::HS256 => Ok(implied),
        Some(other) => Err(format!(
            "\"alg\": \"{other:?}\" is not supported for this key type (use HS256, RS256 or ES256)"
        )),
    }
}

/// Checks the text of a JWKS file; its errors name that file, and a key's errors the line its
/// object starts on.
pub fn parse_jwks(
    path: &std::path::Path,
    text: &str,
) -> Result<Vec<(Jwk, Algorithm)>, ConfigError> {
    let at = Locator {
        file: path,
        source: text,
    };
    let set: JwkSet = serde_json::from_str(text).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        field: String::new(),
        problem: format!("not a JSON Web Key Set: {e}"),
        fix: "write {\"keys\": [{\"kty\": ..., \"kid\": ..., ...}]} as RFC 7517 describes".into(),
    })?;
    // Where each key's object starts: the n-th "kty" member (serde_json keeps no positions).
    let starts: Vec<usize> = text.match_indices("\"kty\"").map(|(i, _)| i).collect();
    let key_at = |i: usize| starts.get(i).map(|&s| s..s + 1);
    if set.keys.is_empty() {
        return Err(at.error(
            text.find("\"keys\"").map(|s| s..s + 1),
            "keys",
            "the key set holds no key, so no token could be accepted",
            "add the issuer's signing keys",
        ));
    }
    let mut out = Vec::new();
    for (i, jwk) in set.keys.into_iter().enumerate() {
        let alg = key_algorithm(&jwk).map_err(|why| {
            at.error(
                key_at(i),
                format!("keys[{i}]"),
                why,
                "remove the key, or give an RSA, EC P-256 or oct key",
            )
        })?;
        DecodingKey::from_jwk(&jwk).map_err(|e| {
            at.error(
                key_at(i),
                format!("keys[{i}]"),
                format!("not a usable key: {e}"),
                "check the key's n/e (RSA), x/y (EC) or k (oct) members",
            )
        })?;
        out.push((jwk, alg));
    }
    Ok(out)
}

/// A path of the config as written: relative paths are taken from the config file's directory,
/// so a config and its key files can move together.
fn beside(at: &Locator<'_>, path: &str) -> PathBuf {
    let p = std::path::Path::new(path);
    match at.file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

fn jwt(at: &Locator<'_>, raw: &Spanned<RawJwt>) -> Result<Jwt, ConfigError> {
    let r = raw.get_ref();
    let jwks_file = beside(at, r.jwks_file.get_ref());
    let text = std::fs::read_to_string(&jwks_file).map_err(|e| {
        at.error(
            Some(r.jwks_file.span()),
            "gateway.jwt.jwks_file",
            format!("cannot read {}: {e}", jwks_file.display()),
            "give the path of a readable JSON Web Key Set ({\"keys\": [...]}); a relative path is read beside the config",
        )
    })?;
    let keys = parse_jwks(&jwks_file, &text)?;
    let algorithms = match &r.algorithms {
        None => {
            let mut out: Vec<Algorithm> = Vec::new();
            for (_, a) in &keys {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
            out
        }
        Some(list) => {
            let mut out = Vec::new();
            for a in list {
                out.push(algorithm(a.get_ref()).ok_or_else(|| {
                    at.error(
                        Some(a.span()),
                        "gateway.jwt.algorithms",
                        format!("\"{}\" is not a supported algorithm", a.get_ref()),
                        "list HS256, RS256 or ES256",
                    )
                })?);
            }
            out
        }
    };
    let strings = |v: &Option<Vec<Spanned<String>>>| -> Vec<String> {
        v.iter().flatten().map(|s| s.get_ref().clone()).collect()
    };
    let consumer_claim = r
        .consumer_claim
        .as_ref()
        .map_or_else(|| "sub".to_string(), |c| c.get_ref().clone());
    Ok(Jwt {
        jwks_file,
        keys,
        issuer: strings(&r.issuer),
        audience: strings(&r.audience),
        leeway: duration(
            at,
            &r.leeway,
            "gateway.jwt.leeway".into(),
            Duration::from_secs(30),
        )?,
        consumer_claim,
        algorithms,
    })
}

/// Validates `[gateway]` and every `[[consumer]]`, reading the consumers and JWKS files.
pub(super) fn validate_gateway(
    at: &Locator<'_>,
    raw: Option<&Spanned<RawGateway>>,
    declared: &[Spanned<RawConsumer>],
) -> Result<Gateway, ConfigError> {
    let mut g = Gateway::default();
    consumers(at, declared, &mut g.consumers, false)?;
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return Ok(g);
    };
    if let Some(h) = &raw.api_key_header {
        g.api_key_header = HeaderName::try_from(h.get_ref().as_str()).map_err(|_| {
            at.error(
                Some(h.span()),
                "gateway.api_key_header",
                format!("\"{}\" is not a header name", h.get_ref()),
                "give a header name such as \"x-api-key\"",
            )
        })?;
    }
    g.api_key_query = raw.api_key_query.as_ref().map(|q| q.get_ref().clone());
    if let Some(path) = &raw.consumers_file {
        let file = beside(at, path.get_ref());
        let text = std::fs::read_to_string(&file).map_err(|e| {
            at.error(
                Some(path.span()),
                "gateway.consumers_file",
                format!("cannot read {}: {e}", file.display()),
                "give the path of a readable TOML file of [[consumer]] tables; a relative path is read beside the config",
            )
        })?;
        let inner = Locator {
            file: &file,
            source: &text,
        };
        let parsed: RawConsumersFile = toml::from_str(&text).map_err(|e| {
            inner.error(
                e.span(),
                "",
                e.message().to_string(),
                "write [[consumer]] tables with name, groups, api_keys and basic_password",
            )
        })?;
        consumers(&inner, &parsed.consumers, &mut g.consumers, true)?;
    }
    if let Some(j) = &raw.jwt {
        g.jwt = Some(jwt(at, j)?);
    }
    Ok(g)
}

/// Validates a route's policy fields against the gateway.
pub(super) fn validate_policy(
    at: &Locator<'_>,
    prefix: &str,
    raw: RawPolicy<'_>,
    gateway: &Gateway,
) -> Result<Policy, ConfigError> {
    let f = |name: &str| format!("{prefix}.{name}");
    let mut policy = Policy {
        pass_credentials: raw.pass_credentials.unwrap_or(false),
        ..Policy::default()
    };
    if let Some(a) = raw.auth {
        let bad = || {
            at.error(
                Some(a.span()),
                f("auth"),
                "auth is \"none\" or a list of methods",
                "write auth = [\"jwt\"], [\"api_key\", \"basic\"], or \"none\"",
            )
        };
        match a.get_ref() {
            toml::Value::String(s) if s == "none" => {}
            toml::Value::Array(list) if !list.is_empty() => {
                for m in list {
                    let method = match m.as_str() {
                        Some("api_key") => AuthMethod::ApiKey,
                        Some("jwt") => AuthMethod::Jwt,
                        Some("basic") => AuthMethod::Basic,
                        _ => {
                            return Err(at.error(
                                Some(a.span()),
                                f("auth"),
                                format!("{m} is not an authentication method"),
                                "use \"api_key\", \"jwt\" or \"basic\"",
                            ));
                        }
                    };
                    let (usable, fix) = match method {
                        AuthMethod::Jwt => (
                            gateway.jwt.is_some(),
                            "add [gateway.jwt] with the issuer's jwks_file",
                        ),
                        AuthMethod::ApiKey => (
                            gateway.consumers.iter().any(|c| !c.api_keys.is_empty()),
                            "give a [[consumer]] api_keys (SHA-256 digests)",
                        ),
                        AuthMethod::Basic => (
                            gateway.consumers.iter().any(|c| c.basic_password.is_some()),
                            "give a [[consumer]] a basic_password (a SHA-256 digest)",
                        ),
                    };
                    if !usable {
                        return Err(at.error(
                            Some(a.span()),
                            f("auth"),
                            format!(
                                "no caller could pass \"{}\": nothing is configured for it",
                                method.as_str()
                            ),
                            fix,
                        ));
                    }
                    if !policy.auth.contains(&method) {
                        policy.auth.push(method);
                    }
                }
            }
            _ => return Err(bad()),
        }
    }
    for entry in raw.allow.iter().flatten() {
        if policy.auth.is_empty() {
            return Err(at.error(
                Some(entry.span()),
                f("allow"),
                "allow names consumers, and this route does not authenticate its callers",
                "add auth = [\"jwt\"] (or api_key, basic) to the route, or remove allow",
            ));
        }
        let text = entry.get_ref();
        let allow = match text.strip_prefix("group:") {
            Some(g) => Allow::Group(g.to_string()),
            None => Allow::Consumer(text.clone()),
        };
        let known = match &allow {
            Allow::Group(g) => gateway.consumers.iter().any(|c| c.groups.contains(g)),
            Allow::Consumer(c) => gateway.consumers.iter().any(|k| &k.name == c),
        };
        if !known {
            let names: Vec<String> = gateway.consumers.iter().map(|c| c.name.clone()).collect();
            return Err(at.error(
                Some(entry.span()),
                f("allow"),
                match &allow {
                    Allow::Group(g) => format!("no consumer is in group \"{g}\""),
                    Allow::Consumer(c) => format!("no consumer is named \"{c}\""),
                },
                if names.is_empty() {
                    "declare it with [[consumer]] name = \"...\" (a JWT subject too)".to_string()
                } else {
                    format!(
                        "use one of {} or \"group:NAME\", or declare it with [[consumer]] (a JWT subject too)",
                        names.join(", ")
                    )
                },
            ));
        }
        policy.allow.push(allow);
    }
    if let Some(h) = raw.consumer_header {
        if policy.auth.is_empty() {
            return Err(at.error(
                Some(h.span()),
                f("consumer_header"),
                "this route does not authenticate its callers, so there is no consumer to forward",
                "add auth to the route, or remove consumer_header",
            ));
        }
        policy.consumer_header =
            Some(HeaderName::try_from(h.get_ref().as_str()).map_err(|_| {
                at.error(
                    Some(h.span()),
                    f("consumer_header"),
                    format!("\"{}\" is not a header name", h.get_ref()),
                    "give a header name such as \"x-consumer\"",
                )
            })?);
    }
    if let Some(l) = raw.rate_limit {
        let r = l.get_ref();
        let field = |n: &str| f(&format!("rate_limit.{n}"));
        let rate = match &r.rate {
            None => None,
            Some(x) if *x.get_ref() > 0.0 && x.get_ref().is_finite() => {
                let per_second = *x.get_ref();
                let burst = match &r.burst {
                    Some(b) if *b.get_ref() == 0 => {
                        return Err(at.error(
                            Some(b.span()),
                            field("burst"),
                            "a burst of 0 admits no request",
                            "give at least 1, such as the rate",
                        ));
                    }
                    Some(b) => *b.get_ref(),
                    None => (per_second.ceil() as u32).max(1),
                };
                Some((per_second, burst))
            }
            Some(x) => {
                return Err(at.error(
                    Some(x.span()),
                    field("rate"),
                    format!("{} is not a rate", x.get_ref()),
                    "give requests per second above 0, such as 100 (or 0.5 for one every 2s)",
                ));
            }
        };
        if rate.is_none() && r.concurrent.is_none() {
            return Err(at.error(
                Some(l.span()),
                f("rate_limit"),
                "the limit limits nothing",
                "give rate (requests per second, with burst) or concurrent, or both",
            ));
        }
        if let Some(c) = r.concurrent.as_ref().filter(|c| *c.get_ref() == 0) {
            return Err(at.error(
                Some(c.span()),
                field("concurrent"),
                "0 concurrent requests admits none",
                "give at least 1",
            ));
        }
        let per = match r.per.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "consumer")) => LimitPer::Consumer,
            Some((_, "route")) => LimitPer::Route,
            Some((p, other)) => {
                return Err(at.error(
                    Some(p.span()),
                    field("per"),
                    format!("\"{other}\" is not a limit key"),
                    "use \"consumer\" (anonymous callers: per client address) or \"route\"",
                ));
            }
        };
        policy.rate_limit = Some(RouteLimit {
            rate,
            per,
            concurrent: r.concurrent.as_ref().map(|c| *c.get_ref()),
        });
    }
    Ok(policy)
}
