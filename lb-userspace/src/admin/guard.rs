//! What every admin request must show before it is served, against a web page in the operator's
//! browser. The admin listener is loopback and tokenless by default, which a page from any
//! site can reach: by a form that POSTs to it (CSRF), or by DNS rebinding, where the page's own
//! host name is made to resolve to 127.0.0.1 so it can read the answers.
//!
//! - **Host.** `Host` must be an IP literal, `localhost`, or one of `[admin] allowed_hosts`. A
//!   rebinding page's requests carry the page's host name, so they are refused.
//! - **Origin.** A browser names the page behind a request in `Origin` and `Sec-Fetch-Site`. A
//!   request from another origin is refused, whatever its method.
//! - **State changes** (every POST) must carry the header `X-Understudy-Client` (any value) or
//!   the bearer token. A form cannot set a header, and a page's script can only do so after a
//!   CORS preflight that this listener never grants. The CLI sends it; with curl, add
//!   `-H 'X-Understudy-Client: curl'`.

use hyper::{HeaderMap, Method, StatusCode, header};

/// The header that marks a request as sent by a program, not by a browser's form.
pub const CLIENT_HEADER: &str = "x-understudy-client";

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub why: String,
}

fn refuse(why: impl Into<String>) -> Refusal {
    Refusal {
        status: StatusCode::FORBIDDEN,
        why: why.into(),
    }
}

fn allowed_host(name: &str, allowed: &[String]) -> bool {
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    literal.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a == name)
}

/// Checks one request's headers; `has_token` says it carried the right bearer token.
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    allowed_hosts: &[String],
    has_token: bool,
) -> Result<(), Refusal> {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return Err(refuse("a Host header is required"));
    };
    let name = crate::l7::headers::host_name(host);
    if !allowed_host(&name, allowed_hosts) {
        return Err(refuse(format!(
            "Host \"{host}\" is not this listener: use an IP address or localhost, or add the \
             name to [admin] allowed_hosts"
        )));
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(refuse(format!(
            "a {site} request from a web page is refused"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let same = origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host.trim()));
        if !same {
            return Err(refuse(format!(
                "a request from the web page at {origin} is refused"
            )));
        }
    }
    if *method != Method::GET
        && *method != Method::HEAD
        && !has_token
        && !headers.contains_key(CLIENT_HEADER)
    {
        return Err(refuse(format!(
            "a state-changing request needs the header {CLIENT_HEADER} (any value) or the bearer \
             token; `understudy` sends it, and with curl add -H '{CLIENT_HEADER}: curl'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn what_is_served_and_what_is_refused() {
        let allowed = vec!["lb1.example.com".to_string()];
        let post = Method::POST;
        let get = Method::GET;
        let cli = (CLIENT_HEADER, "understudy");
        // (what, method, headers, token, served)
        type Row<'a> = (&'a str, &'a Method, Vec<(&'a str, &'a str)>, bool, bool);
        let rows: Vec<Row<'_>> = vec![
            (
                "the CLI's POST",
                &post,
                vec![("host", "127.0.0.1:9180"), cli],
                false,
                true,
            ),
            (
                "a scrape by IP",
                &get,
                vec![("host", "10.0.0.1:9180")],
                false,
                true,
            ),
            (
                "IPv6 loopback",
                &get,
                vec![("host", "[::1]:9180")],
                false,
                true,
            ),
            (
                "localhost",
                &get,
                vec![("host", "localhost:9180")],
                false,
                true,
            ),
            (
                "an allowed name",
                &get,
                vec![("host", "LB1.example.com:9180")],
                false,
                true,
            ),
            ("no Host", &get, vec![], false, false),
            (
                "DNS rebinding",
                &get,
                vec![("host", "evil.example:9180")],
                false,
                false,
            ),
            (
                "a form's POST",
                &post,
                vec![("host", "127.0.0.1:9180")],
                false,
                false,
            ),
            (
                "a POST with the token",
                &post,
                vec![("host", "127.0.0.1:9180")],
                true,
                true,
            ),
            (
                "a cross-site form with the header forged in",
                &post,
                vec![
                    ("host", "127.0.0.1:9180"),
                    ("origin", "http://evil.example"),
                    cli,
                ],
                false,
                false,
            ),
            (
                "a cross-site fetch",
                &get,
                vec![("host", "127.0.0.1:9180"), ("sec-fetch-site", "cross-site")],
                false,
                false,
            ),
            (
                "the status page's own request",
                &get,
                vec![
                    ("host", "127.0.0.1:9180"),
                    ("origin", "http://127.0.0.1:9180"),
                    ("sec-fetch-site", "same-origin"),
                ],
                false,
                true,
            ),
            (
                "a typed URL",
                &get,
                vec![("host", "127.0.0.1:9180"), ("sec-fetch-site", "none")],
                false,
                true,
            ),
        ];
        for (what, method, h, token, served) in rows {
            let got = check(method, &headers(&h), &allowed, token);
            assert_eq!(got.is_ok(), served, "{what}: {got:?}");
        }
    }
}
