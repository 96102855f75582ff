//! Header rewriting at the proxy: hop-by-hop headers (RFC 9110 §7.6.1) are removed both ways;
//! requests gain `X-Forwarded-For`, `X-Forwarded-Proto` (set), `Forwarded` (RFC 7239) and
//! optionally `Via`; responses gain the attempt count and `Via` when configured.
//!
//! The forwarding headers are appended to only when the peer is one of `trusted_proxies`. From
//! anyone else they are replaced, and `X-Real-IP` is removed, so the left-most address a backend
//! reads is always one the proxy saw or a trusted proxy vouched for. HTTP/2 may split `cookie`
//! into several fields; they are joined with `; ` for the HTTP/1.1 upstream (RFC 9113 §8.2.3).

use std::net::SocketAddr;

use hyper::{
    HeaderMap, Version,
    header::{self, HeaderName, HeaderValue},
};

/// The comma-separated tokens of every `name` field (as `Connection` and `TE` carry them).
fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a `name` field lists `token` (case-insensitive), such as `Connection: upgrade`.
pub fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The host part of a `Host` value, without its port, lowercased; brackets kept for IPv6.
pub fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.to_ascii_lowercase()
}

/// Removes the hop-by-hop headers, including any that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = tokens(headers, header::CONNECTION)
        .filter_map(|t| HeaderName::try_from(t).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn version_token(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Appends `value` to a list-valued header.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(old) if !old.is_empty() => format!("{old}, {value}"),
        _ => value.to_string(),
    };
    if let Ok(v) = HeaderValue::try_from(joined) {
        headers.insert(name, v);
    }
}

/// A client connection's address, formatted once for every request on it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// The address as `X-Forwarded-For` carries it.
    ip: String,
    /// ... and as a `Forwarded` node (IPv6 quoted in brackets).
    node: String,
    /// The peer is one of `trusted_proxies`: its forwarding headers are kept.
    pub trusted: bool,
}

impl ClientInfo {
    pub fn new(addr: SocketAddr, trusted_proxies: &[ipnet::IpNet]) -> ClientInfo {
        let ip = addr.ip().to_string();
        let node = if addr.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        let peer = addr.ip().to_canonical();
        let trusted = trusted_proxies.iter().any(|n| n.contains(&peer));
        ClientInfo {
            addr,
            ip,
            node,
            trusted,
        }
    }

    /// The client's address as text.
    pub fn ip(&self) -> &str {
        &self.ip
    }
}

/// Joins several `cookie` fields into one, with `; ` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let values: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if values.len() < 2 {
        return;
    }
    let joined = values.join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// The header rewrite as a request filter: the last step of every service's chain.
pub struct Forwarding {
    /// The listener terminates TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    pub via: Option<String>,
}

impl super::filter::RequestFilter for Forwarding {
    fn name(&self) -> &'static str {
        "forwarding"
    }

    fn on_request(
        &self,
        head: &mut hyper::http::request::Parts,
        client: &ClientInfo,
        _: &mut super::filter::Held,
    ) -> super::filter::Verdict {
        // Disjoint fields of the head: the authority is borrowed, not copied, per request.
        forward_request(
            &mut head.headers,
            head.version,
            head.uri.authority().map(|a| a.as_str()),
            client,
            self.tls,
            self.via.as_deref(),
        );
        super::filter::Verdict::Continue
    }
}

/// Rewrites a client's request headers for the upstream.
pub fn forward_request(
    headers: &mut HeaderMap,
    version: Version,
    authority: Option<&str>,
    client: &ClientInfo,
    tls: bool,
    via: Option<&str>,
) {
    strip_hop_by_hop(headers);
    if !client.trusted {
        headers.remove("x-forwarded-for");
        headers.remove(header::FORWARDED);
        headers.remove("x-real-ip");
    }
    if version == Version::HTTP_2 {
        join_cookies(headers);
    }
    // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs it as Host.
    if !headers.contains_key(header::HOST)
        && let Some(a) = authority.and_then(|a| HeaderValue::try_from(a).ok())
    {
        headers.insert(header::HOST, a);
    }
    let proto = if tls { "https" } else { "http" };
    append(
        headers,
        HeaderName::from_static("x-forwarded-for"),
        &client.ip,
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    let mut forwarded = format!("for={};proto={proto}", client.node);
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok())
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
    {
        forwarded.push_str(&format!(";host=\"{host}\""));
    }
    append(headers, header::FORWARDED, &forwarded);
    if let Some(via) = via {
        append(
            headers,
            header::VIA,
            &format!("{} {via}", version_token(version)),
        );
    }
}

/// Rewrites an upstream's response headers for the client.
pub fn forward_response(
    headers: &mut HeaderMap,
    version: Version,
    via: Option<&str>,
    attempt_header: Option<&HeaderName>,
    attempts: u32,
) {
    strip_hop_by_hop(headers);
    if let Some(via) = via {
        append(
            headers,
            header::VIA,
            &format!("{} {via}", version_token(version)),
        );
    }
    if let Some(name) = attempt_header {
        headers.insert(name.clone(), HeaderValue::from(attempts));
    }
}

/// `path_and_query` with query parameter `param` replaced by `value`, or removed when `value`
/// is `None`; `None` when the parameter is not there (nothing to rewrite). Used to take an API
/// key out of what goes upstream and out of the access log.
pub fn with_query_param(path_and_query: &str, param: &str, value: Option<&str>) -> Option<String> {
    let (path, query) = path_and_query.split_once('?')?;
    let pairs = || form_urlencoded::parse(query.as_bytes());
    if !pairs().any(|(k, _)| k == param) {
        return None;
    }
    let kept: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs().filter_map(|(k, v)| match (k == param, value) {
            (false, _) => Some((k, v)),
            (true, Some(new)) => Some((k, new.into())),
            (true, None) => None,
        }))
        .finish();
    Some(if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{kept}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.insert(header::HOST, HeaderValue::from_static("api.example"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let trusted = ["198.51.100.0/24".parse().unwrap()];
        let client = ClientInfo::new("198.51.100.7:40000".parse().unwrap(), &trusted);
        forward_request(
            &mut h,
            Version::HTTP_11,
            None,
            &client,
            true,
            Some("understudy"),
        );
        for gone in ["connection", "x-private", "keep-alive", "te", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} must be stripped");
        }
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.7;proto=https;host=\"api.example\""
        );
        assert_eq!(h["via"], "1.1 understudy");
    }

    #[test]
    fn http2_requests_get_a_host_and_ipv6_clients_are_quoted() {
        let mut h = HeaderMap::new();
        let client = ClientInfo::new("[2001:db8::7]:40000".parse().unwrap(), &[]);
        forward_request(
            &mut h,
            Version::HTTP_2,
            Some("api.example:8443"),
            &client,
            false,
            None,
        );
        assert_eq!(h["host"], "api.example:8443");
        assert_eq!(h["x-forwarded-for"], "2001:db8::7");
        assert!(
            h["forwarded"]
                .to_str()
                .unwrap()
                .starts_with("for=\"[2001:db8::7]\";proto=http")
        );
        assert!(!h.contains_key("via"));
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_the_client_address() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let client = ClientInfo::new("198.51.100.7:40000".parse().unwrap(), &trusted);
        assert!(!client.trusted);
        forward_request(&mut h, Version::HTTP_11, None, &client, false, None);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["forwarded"], "for=198.51.100.7;proto=http");
        assert!(!h.contains_key("x-real-ip"));
        // An IPv4 client on a dual-stack listener arrives as ::ffff:a.b.c.d.
        let mapped = ClientInfo::new("[::ffff:10.1.2.3]:1".parse().unwrap(), &trusted);
        assert!(mapped.trusted);
    }

    #[test]
    fn http2_cookie_fields_are_joined() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let client = ClientInfo::new("198.51.100.7:40000".parse().unwrap(), &[]);
        forward_request(&mut h, Version::HTTP_2, None, &client, false, None);
        let cookies: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, vec!["a=1; b=2"]);
    }

    #[test]
    fn responses_carry_the_attempts() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let name = HeaderName::from_static("x-understudy-attempts");
        forward_response(&mut h, Version::HTTP_2, Some("understudy"), Some(&name), 3);
        assert_eq!(h["x-understudy-attempts"], "3");
        assert_eq!(h["via"], "2 understudy");
        assert!(!h.contains_key("transfer-encoding"));
    }
}
