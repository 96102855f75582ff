//! An HTTP service's routes (`[[service.route]]`): what a request must look like to take the
//! route (host, path, method, headers), and the chain of pools it is served from, in fallback
//! order, each with an optional rewrite. The model is Envoy's route table and HAProxy's
//! `use_backend` rules: the first route that matches wins, so a config whose later route can
//! never match (an earlier one takes every request it would) is refused, as is a route naming a
//! pool that does not exist.
//!
//! A service without routes has one implicit route that takes every request to the service's
//! own backends.

use std::{collections::BTreeMap, fmt, time::Duration};

use hyper::{
    Method,
    http::{HeaderName, HeaderValue},
};
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, error::Locator, health::duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Spanned<String>>,
    /// "api.example.com", or "*.example.com" for any name below it.
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    /// Header name to the value it must have exactly, or "*" for present with any value.
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    /// The fallback chain, primary first.
    pub pools: Spanned<Vec<Spanned<String>>>,
    pub failover: Option<Spanned<RawFailover>>,
    /// Per pool of the chain: how a request is rewritten when that pool serves it.
    pub rewrite: Option<BTreeMap<String, Spanned<RawRewrite>>>,
    /// "none", or the methods a caller may prove itself with: ["jwt", "api_key", "basic"].
    pub auth: Option<Spanned<toml::Value>>,
    /// Consumers and "group:NAME"s the route admits; default: any authenticated caller.
    pub allow: Option<Vec<Spanned<String>>>,
    pub pass_credentials: Option<bool>,
    pub consumer_header: Option<Spanned<String>>,
    pub rate_limit: Option<Spanned<super::gateway::RawRouteLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    pub error_threshold: Option<Spanned<f64>>,
    pub latency_threshold: Option<Spanned<String>>,
    pub latency_quantile: Option<Spanned<f64>>,
    pub min_requests: Option<Spanned<u32>>,
    pub window: Option<Spanned<String>>,
    pub probe_ratio: Option<Spanned<f64>>,
    pub hold: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    /// The `Host` the pool's backends are sent.
    pub host: Option<Spanned<String>>,
    /// Replaces the part of the path the route's `path_prefix` matched.
    pub prefix: Option<Spanned<String>>,
    /// Request headers set (replacing any the client sent).
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
}

/// One route, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its name in logs, metrics and `/status`: `name`, or "route<N>" by position.
    pub name: String,
    pub matcher: RouteMatch,
    /// The pools that serve it, primary first; never empty.
    pub chain: Vec<PoolRef>,
    /// Moving off a pool on errors or latency; `None`: the chain follows health alone.
    pub failover: Option<Failover>,
    /// Who may take the route and how fast (`auth`, `allow`, `rate_limit`).
    pub policy: super::Policy,
}

/// What a request must carry to take a route; an empty condition matches anything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    /// Any of these; empty: any method.
    pub methods: Vec<Method>,
    /// Every one of these: the value exactly, or (`None`) present.
    pub headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// The name exactly (lower case, no port).
    Exact(String),
    /// Any name ending in this suffix, the dot included: "*.example.com" is ".example.com".
    Below(String),
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// The whole path must match (the regex is anchored at both ends).
    Regex(regex::Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl fmt::Display for RouteMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match &self.host {
            Some(HostMatch::Exact(h)) => parts.push(format!("host {h}")),
            Some(HostMatch::Below(h)) => parts.push(format!("host *{h}")),
            None => {}
        }
        match &self.path {
            Some(PathMatch::Exact(p)) => parts.push(format!("path {p}")),
            Some(PathMatch::Prefix(p)) => parts.push(format!("path {p}*")),
            Some(PathMatch::Regex(r)) => parts.push(format!("path ~ {}", r.as_str())),
            None => {}
        }
        if !self.methods.is_empty() {
            let m: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            parts.push(m.join("|"));
        }
        for (name, value) in &self.headers {
            match value {
                Some(v) => parts.push(format!("{name}: {}", v.to_str().unwrap_or("?"))),
                None => parts.push(format!("{name} present")),
            }
        }
        if parts.is_empty() {
            f.write_str("every request")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// One pool of a route's chain, and how requests it serves are rewritten.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRef {
    pub pool: String,
    /// What its backends speak.
    pub protocol: super::UpstreamProtocol,
    pub host: Option<HeaderValue>,
    pub prefix: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl PoolRef {
    pub fn plain(pool: &str, protocol: super::UpstreamProtocol) -> PoolRef {
        PoolRef {
            pool: pool.into(),
            protocol,
            host: None,
            prefix: None,
            headers: Vec::new(),
        }
    }
}

/// When a route leaves a pool that answers badly, and when it comes back (`[service.route.failover]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    /// Gateway failures as the circuits count them (`failure_statuses`, by default 502, 503,
    /// 504; connect failures, resets, timeouts) as a share of the
    /// pool's attempts over `window`, above which the route moves on. Default 0.2.
    pub error_threshold: f64,
    /// The `latency_quantile` of the pool's response times above which the route moves on;
    /// none by default.
    pub latency_threshold: Option<Duration>,
    /// Default 0.9.
    pub latency_quantile: f64,
    /// Attempts in the window before either threshold is judged. Default 20.
    pub min_requests: u32,
    /// The sliding window. Default 10 s.
    pub window: Duration,
    /// While moved off, this share of requests still goes to the pool it left, so its recovery
    /// is seen. Default 0.05.
    pub probe_ratio: f64,
    /// The pool must stay under both thresholds this long before the route moves back.
    /// Default 10 s.
    pub hold: Duration,
}

/// A request's view for matching: lower-case host without port, path, method, headers.
pub struct RouteRequest<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a hyper::HeaderMap,
}

impl RouteMatch {
    pub fn matches(&self, r: &RouteRequest<'_>) -> bool {
        let host = match &self.host {
            None => true,
            Some(HostMatch::Exact(h)) => r.host == h,
            Some(HostMatch::Below(s)) => r.host.len() > s.len() && r.host.ends_with(s.as_str()),
        };
        let path = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => r.path == p,
            Some(PathMatch::Prefix(p)) => r.path.starts_with(p.as_str()),
            Some(PathMatch::Regex(re)) => re.is_match(r.path),
        };
        host && path
            && (self.methods.is_empty() || self.methods.contains(r.method))
            && self.headers.iter().all(|(name, want)| {
                let got = r.headers.get(name);
                match want {
                    None => got.is_some(),
                    Some(v) => got == Some(v),
                }
            })
    }

    /// Whether every request `later` matches is matched by `self` first, as far as can be told
    /// without enumerating requests (regexes are compared as text).
    fn covers(&self, later: &RouteMatch) -> bool {
        let host = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(a), Some(b)) if a == b => true,
            (Some(HostMatch::Below(s)), Some(HostMatch::Exact(h))) => {
                h.len() > s.len() && h.ends_with(s.as_str())
            }
            (Some(HostMatch::Below(s)), Some(HostMatch::Below(t))) => t.ends_with(s.as_str()),
            _ => false,
        };
        let path = match (&self.path, &later.path) {
            (None, _) => true,
            (Some(a), Some(b)) if a == b => true,
            (Some(PathMatch::Prefix(p)), Some(PathMatch::Exact(q) | PathMatch::Prefix(q))) => {
                q.starts_with(p.as_str())
            }
            _ => false,
        };
        let methods = self.methods.is_empty()
            || (!later.methods.is_empty()
                && later.methods.iter().all(|m| self.methods.contains(m)));
        let headers = self.headers.iter().all(|(name, want)| {
            later
                .headers
                .iter()
                .any(|(n, v)| n == name && (want.is_none() || want == v))
        });
        host && path && methods && headers
    }
}

fn header_pairs(
    at: &Locator<'_>,
    raw: &Spanned<BTreeMap<String, String>>,
    field: &str,
) -> Result<Vec<(HeaderName, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in raw.get_ref() {
        let header = HeaderName::try_from(name.as_str()).map_err(|_| {
            at.error(
                Some(raw.span()),
                field,
                format!("\"{name}\" is not a valid header name"),
                "use letters, digits and '-', such as \"x-tenant\"",
            )
        })?;
        if HeaderValue::from_str(value).is_err() {
            return Err(at.error(
                Some(raw.span()),
                field,
                format!("the value of {name} is not a valid header value"),
                "use visible ASCII without line breaks",
            ));
        }
        out.push((header, value.clone()));
    }
    Ok(out)
}

fn fraction(
    at: &Locator<'_>,
    v: &Option<Spanned<f64>>,
    field: String,
    default: f64,
    open_zero: bool,
) -> Result<f64, ConfigError> {
    match v {
        None => Ok(default),
        Some(x) => {
            let r = *x.get_ref();
            let ok = if open_zero {
                r > 0.0 && r <= 1.0
            } else {
                (0.0..=1.0).contains(&r)
            };
            if ok {
                Ok(r)
            } else {
                Err(at.error(
                    Some(x.span()),
                    field,
                    format!("{r} is not a fraction"),
                    if open_zero {
                        "give a fraction above 0 and at most 1, such as 0.2"
                    } else {
                        "give a fraction from 0 to 1, such as 0.05"
                    },
                ))
            }
        }
    }
}

fn failover(
    at: &Locator<'_>,
    prefix: &str,
    raw: &Spanned<RawFailover>,
) -> Result<Failover, ConfigError> {
    let f = |name: &str| format!("{prefix}.failover.{name}");
    let r = raw.get_ref();
    let latency_threshold = match &r.latency_threshold {
        None => None,
        Some(_) => Some(duration(
            at,
            &r.latency_threshold,
            f("latency_threshold"),
            Duration::ZERO,
        )?),
    };
    let window = duration(at, &r.window, f("window"), Duration::from_secs(10))?;
    if window < Duration::from_millis(100) {
        return Err(at.error(
            r.window.as_ref().map(Spanned::span),
            f("window"),
            "a window under 100ms holds too few requests to judge",
            "give a window of a second or more, such as \"10s\"",
        ));
    }
    let min_requests = match &r.min_requests {
        None => 20,
        Some(n) if *n.get_ref() >= 1 => *n.get_ref(),
        Some(n) => {
            return Err(at.error(
                Some(n.span()),
                f("min_requests"),
                "0 requests cannot show a pool's error rate",
                "give at least 1, such as 20",
            ));
        }
    };
    Ok(Failover {
        error_threshold: fraction(at, &r.error_threshold, f("error_threshold"), 0.2, true)?,
        latency_threshold,
        latency_quantile: fraction(at, &r.latency_quantile, f("latency_quantile"), 0.9, true)?,
        min_requests,
        window,
        probe_ratio: fraction(at, &r.probe_ratio, f("probe_ratio"), 0.05, false)?,
        hold: duration(at, &r.hold, f("hold"), Duration::from_secs(10))?,
    })
}

fn host_match(
    at: &Locator<'_>,
    raw: &Spanned<String>,
    field: String,
) -> Result<HostMatch, ConfigError> {
    let h = raw.get_ref().trim().to_ascii_lowercase();
    let (below, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, h.clone()),
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid {
        return Err(at.error(
            Some(raw.span()),
            field,
            format!("\"{}\" is not a host name", raw.get_ref()),
            "write a name without scheme or port, such as \"api.example.com\", or \"*.example.com\" for every name below it",
        ));
    }
    Ok(if below {
        HostMatch::Below(format!(".{name}"))
    } else {
        HostMatch::Exact(name)
    })
}

/// Validates a service's routes. `pools`: the names a route may use (the `[[pool]]`s, and the
/// service's own name when it has backends of its own).
pub(super) fn validate_routes(
    at: &Locator<'_>,
    prefix: &str,
    raw: &[Spanned<RawRoute>],
    pools: &[String],
    protocols: &std::collections::HashMap<String, super::UpstreamProtocol>,
    gateway: &super::Gateway,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<(Route, usize)> = Vec::new();
    for (k, spanned) in raw.iter().enumerate() {
        let r = spanned.get_ref();
        let p = format!("{prefix}.route[{k}]");
        let f = |name: &str| format!("{p}.{name}");
        let name = match &r.name {
            Some(n) => {
                let t = n.get_ref();
                if t.is_empty()
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(at.error(
                        Some(n.span()),
                        f("name"),
                        format!("\"{t}\" is not a valid route name"),
                        "use letters, digits, '-', '_' and '.' only, such as \"images\"",
                    ));
                }
                if routes.iter().any(|(e, _)| &e.name == t) {
                    return Err(at.error(
                        Some(n.span()),
                        f("name"),
                        format!("another route of this service is already named \"{t}\""),
                        "give every route of a service its own name",
                    ));
                }
                t.clone()
            }
            None => format!("route{k}"),
        };
        let mut matcher = RouteMatch::default();
        if let Some(h) = &r.host {
            matcher.host = Some(host_match(at, h, f("host"))?);
        }
        let paths = [
            ("path", &r.path),
            ("path_prefix", &r.path_prefix),
            ("path_regex", &r.path_regex),
        ];
        let given: Vec<_> = paths.iter().filter(|(_, v)| v.is_some()).collect();
        if given.len() > 1 {
            return Err(at.error(
                given[1].1.as_ref().map(Spanned::span),
                f(given[1].0),
                format!(
                    "a route has one path condition, and this one has {} and {}",
                    given[0].0, given[1].0
                ),
                "keep one of path, path_prefix and path_regex (split the route in two for both)",
            ));
        }
        if let Some((field, Some(v))) = given.first().map(|(n, v)| (*n, *v)) {
            let text = v.get_ref();
            matcher.path = Some(match field {
                "path_regex" => {
                    PathMatch::Regex(regex::Regex::new(&format!("^(?:{text})$")).map_err(|e| {
                        at.error(
                            Some(v.span()),
                            f(field),
                            format!(
                                "not a regular expression: {}",
                                e.to_string().lines().last().unwrap_or("")
                            ),
                            "write a regex of the `regex` crate's syntax, such as \"/v[0-9]+/.*\"",
                        )
                    })?)
                }
                _ if !text.starts_with('/') => {
                    return Err(at.error(
                        Some(v.span()),
                        f(field),
                        format!("\"{text}\" does not start with '/'"),
                        "write the path as requests carry it, such as \"/api/\"",
                    ));
                }
                "path" => PathMatch::Exact(text.clone()),
                _ => PathMatch::Prefix(text.clone()),
            });
        }
        for m in r.methods.iter().flatten() {
            let method =
                Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                    at.error(
                        Some(m.span()),
                        f("methods"),
                        format!("\"{}\" is not an HTTP method", m.get_ref()),
                        "list methods such as \"GET\" and \"POST\"",
                    )
                })?;
            matcher.methods.push(method);
        }
        if let Some(h) = &r.headers {
            for (name, value) in header_pairs(at, h, &f("headers"))? {
                let want = (value != "*").then(|| HeaderValue::from_str(&value).expect("checked"));
                matcher.headers.push((name, want));
            }
        }
        let chain_span = r.pools.span();
        if r.pools.get_ref().is_empty() {
            return Err(at.error(
                Some(chain_span),
                f("pools"),
                "the route names no pool to serve it",
                "list the pools that serve the route, primary first, such as pools = [\"primary\", \"backup\"]",
            ));
        }
        let mut chain: Vec<PoolRef> = Vec::new();
        for pool in r.pools.get_ref() {
            let n = pool.get_ref();
            if !pools.contains(n) {
                return Err(at.error(
                    Some(pool.span()),
                    f("pools"),
                    format!("no pool is named \"{n}\""),
                    if pools.is_empty() {
                        "declare it with [[pool]] name = \"...\" and its [[pool.backend]]s"
                            .to_string()
                    } else {
                        format!(
                            "use one of {} (or declare it with [[pool]])",
                            pools.join(", ")
                        )
                    },
                ));
            }
            if chain.iter().any(|c| &c.pool == n) {
                return Err(at.error(
                    Some(pool.span()),
                    f("pools"),
                    format!("pool \"{n}\" is listed twice in the chain"),
                    "list each pool once; retries already try every backend of a pool",
                ));
            }
            chain.push(PoolRef::plain(
                n,
                protocols.get(n).copied().unwrap_or_default(),
            ));
        }
        for (pool, rw) in r.rewrite.iter().flatten() {
            let field = format!("{p}.rewrite.{pool}");
            let Some(target) = chain.iter_mut().find(|c| &c.pool == pool) else {
                return Err(at.error(
                    Some(rw.span()),
                    field,
                    format!("\"{pool}\" is not in this route's pools"),
                    "name a pool of the route's chain, or remove the rewrite",
                ));
            };
            let w = rw.get_ref();
            if let Some(h) = &w.host {
                let hm = host_match(at, h, format!("{field}.host"))?;
                match hm {
                    HostMatch::Exact(name) => {
                        target.host = Some(HeaderValue::from_str(&name).expect("checked name"));
                    }
                    HostMatch::Below(_) => {
                        return Err(at.error(
                            Some(h.span()),
                            format!("{field}.host"),
                            "a rewrite sets one host, and a wildcard is not one",
                            "write the host the pool's backends expect, such as \"backup.example.net\"",
                        ));
                    }
                }
            }
            if let Some(pfx) = &w.prefix {
                if !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
                    return Err(at.error(
                        Some(pfx.span()),
                        format!("{field}.prefix"),
                        "a prefix rewrite replaces what path_prefix matched, and this route has no path_prefix",
                        "match the route with path_prefix, or remove the rewrite's prefix",
                    ));
                }
                if !pfx.get_ref().starts_with('/') {
                    return Err(at.error(
                        Some(pfx.span()),
                        format!("{field}.prefix"),
                        format!("\"{}\" does not start with '/'", pfx.get_ref()),
                        "write the path the backends expect, such as \"/v2/\"",
                    ));
                }
                target.prefix = Some(pfx.get_ref().clone());
            }
            if let Some(h) = &w.headers {
                for (name, value) in header_pairs(at, h, &format!("{field}.headers"))? {
                    target
                        .headers
                        .push((name, HeaderValue::from_str(&value).expect("checked")));
                }
            }
        }
        let failover = match &r.failover {
            None => None,
            Some(fo) => {
                if chain.len() < 2 {
                    return Err(at.error(
                        Some(fo.span()),
                        f("failover"),
                        "failover moves a route to the next pool of its chain, and this route has one pool",
                        "add a backup pool to `pools`, or remove [service.route.failover]",
                    ));
                }
                Some(failover(at, &p, fo)?)
            }
        };
        let policy = super::gateway::validate_policy(
            at,
            &p,
            super::gateway::RawPolicy {
                auth: &r.auth,
                allow: &r.allow,
                pass_credentials: r.pass_credentials,
                consumer_header: &r.consumer_header,
                rate_limit: &r.rate_limit,
            },
            gateway,
        )?;
        let route = Route {
            name,
            matcher,
            chain,
            failover,
            policy,
        };
        let (line, _) = at.position(spanned.span().start);
        if let Some((earlier, earlier_line)) = routes
            .iter()
            .find(|(e, _)| e.matcher.covers(&route.matcher))
        {
            return Err(at.error(
                Some(spanned.span()),
                &p,
                format!(
                    "route \"{}\" can never match: route \"{}\" (line {earlier_line}) comes first and takes every request it would ({})",
                    route.name, earlier.name, earlier.matcher
                ),
                "put the more specific route first, or narrow the earlier one",
            ));
        }
        routes.push((route, line));
    }
    Ok(routes.into_iter().map(|(r, _)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: Option<HostMatch>, path: Option<PathMatch>, methods: &[&str]) -> RouteMatch {
        RouteMatch {
            host,
            path,
            methods: methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .collect(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn covering_is_judged_per_condition() {
        let any = RouteMatch::default();
        let api = m(None, Some(PathMatch::Prefix("/api/".into())), &[]);
        let api_v1 = m(None, Some(PathMatch::Prefix("/api/v1/".into())), &[]);
        let get_api = m(None, Some(PathMatch::Prefix("/api/".into())), &["GET"]);
        let host = m(Some(HostMatch::Exact("a.example.com".into())), None, &[]);
        let below = m(Some(HostMatch::Below(".example.com".into())), None, &[]);
        assert!(any.covers(&api));
        assert!(api.covers(&api_v1));
        assert!(!api_v1.covers(&api));
        assert!(api.covers(&get_api), "any method covers GET");
        assert!(!get_api.covers(&api), "GET does not cover any method");
        assert!(below.covers(&host));
        assert!(!host.covers(&below));
        let re = m(
            None,
            Some(PathMatch::Regex(regex::Regex::new("^(?:/x)$").unwrap())),
            &[],
        );
        assert!(!re.covers(&api) && !api.covers(&re));
    }
}
