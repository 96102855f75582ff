//! The request-filter chain: what every request passes through before a backend is chosen, in
//! the manner of Envoy's HTTP filters and Pingora's `request_filter` phase.
//!
//! A filter sees the request head and the client. It may rewrite the head, and it either lets the
//! request through or answers it itself (a 401, a 403, a 429...), in which case no backend is
//! chosen, no body is read and nothing counts against any backend. Refusals are counted per
//! filter in `understudy_http_filter_refusals` and logged at debug level.
//!
//! Filters run in order; the chain stops at the first that answers. Two chains run per request:
//! the route's own ([`Chain::for_route`]: authentication, then rate limits, the gateway
//! policy), then the service's ([`Chain::for_service`]: the header rewrite,
//! [`super::headers::Forwarding`]), so a refused request's headers are never touched and a
//! request refused by authentication never spends its caller's rate.
//!
//! A filter may hold something for as long as the response lasts (a slot of a concurrency
//! limit): it pushes it into [`Held`], which the proxy drops when the response body ends.

use hyper::{
    StatusCode,
    http::{HeaderName, HeaderValue, request::Parts},
};

use super::headers::{ClientInfo, Forwarding};
use crate::config::HttpService;

/// A filter's decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the request on, to the next filter or to backend selection.
    Continue,
    /// Answer the client with this status, reason and headers; the request goes no further.
    Respond {
        status: StatusCode,
        reason: String,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

impl Verdict {
    pub fn respond(status: StatusCode, reason: impl Into<String>) -> Verdict {
        Verdict::Respond {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }
}

/// What filters keep until the response ends (dropped with it).
pub type Held = Vec<Box<dyn Send + Sync>>;

/// One step of the chain. Synchronous: a filter decides from the head and its own state (a
/// token check, a bucket), never by waiting on the network.
pub trait RequestFilter: Send + Sync {
    /// Its name in metrics and logs, such as "forwarding" or "rate_limit".
    fn name(&self) -> &'static str;

    fn on_request(&self, head: &mut Parts, client: &ClientInfo, held: &mut Held) -> Verdict;
}

/// A request a filter answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub filter: &'static str,
    pub status: StatusCode,
    pub reason: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A service's filters, in order.
pub struct Chain {
    filters: Vec<Box<dyn RequestFilter>>,
}

impl Chain {
    pub fn new(filters: Vec<Box<dyn RequestFilter>>) -> Chain {
        Chain { filters }
    }

    /// The chain an HTTP service runs. `tls`: whether its listener terminates TLS.
    pub fn for_service(settings: &HttpService, tls: bool) -> Chain {
        Chain::new(vec![Box::new(Forwarding {
            tls,
            via: settings.via.clone(),
        })])
    }

    /// A route's policy: authentication (with `auth`), then rate limits (with `rate_limit`).
    pub fn for_route(
        service: &str,
        route: &crate::config::Route,
        credentials: &std::sync::Arc<super::auth::Credentials>,
    ) -> Chain {
        let p = &route.policy;
        let mut filters: Vec<Box<dyn RequestFilter>> = Vec::new();
        if !p.auth.is_empty() {
            filters.push(Box::new(super::auth::Authenticate::new(
                p,
                credentials.clone(),
            )));
        }
        if let Some(limit) = &p.rate_limit {
            filters.push(Box::new(super::ratelimit::RateLimit::new(
                &format!("{service}/{}", route.name),
                limit,
                governor::clock::DefaultClock::default(),
            )));
        }
        Chain::new(filters)
    }

    /// Whether the chain has no filter (a route without policy).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs every filter in order until one answers.
    pub fn run(
        &self,
        head: &mut Parts,
        client: &ClientInfo,
        held: &mut Held,
    ) -> Result<(), Refused> {
        for f in &self.filters {
            if let Verdict::Respond {
                status,
                reason,
                headers,
            } = f.on_request(head, client, held)
            {
                return Err(Refused {
                    filter: f.name(),
                    status,
                    reason,
                    headers,
                });
            }
        }
        Ok(())
    }

    /// The filters' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.filters.iter().map(|f| f.name()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use hyper::Request;

    use super::*;

    /// Refuses requests to `/private`, and counts the requests it saw.
    struct Guard(Arc<AtomicUsize>);

    impl RequestFilter for Guard {
        fn name(&self) -> &'static str {
            "guard"
        }

        fn on_request(&self, head: &mut Parts, _: &ClientInfo, _: &mut Held) -> Verdict {
            self.0.fetch_add(1, Ordering::Relaxed);
            if head.uri.path() == "/private" {
                Verdict::respond(StatusCode::FORBIDDEN, "private")
            } else {
                head.headers.insert("x-guarded", "1".parse().unwrap());
                Verdict::Continue
            }
        }
    }

    fn head(path: &str) -> Parts {
        Request::get(path).body(()).unwrap().into_parts().0
    }

    fn client() -> ClientInfo {
        ClientInfo::new("192.0.2.7:40000".parse().unwrap(), &[])
    }

    #[test]
    fn the_first_answer_stops_the_chain() {
        let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let chain = Chain::new(vec![
            Box::new(Guard(first.clone())),
            Box::new(Guard(second.clone())),
        ]);
        let mut h = head("/private");
        let refused = chain.run(&mut h, &client(), &mut Held::new()).unwrap_err();
        assert_eq!(
            (refused.filter, refused.status, refused.reason.as_str()),
            ("guard", StatusCode::FORBIDDEN, "private")
        );
        assert_eq!(first.load(Ordering::Relaxed), 1);
        assert_eq!(
            second.load(Ordering::Relaxed),
            0,
            "the second filter never ran"
        );

        let mut h = head("/public");
        chain.run(&mut h, &client(), &mut Held::new()).unwrap();
        assert_eq!(second.load(Ordering::Relaxed), 1);
        assert_eq!(h.headers["x-guarded"], "1", "a filter may rewrite the head");
    }

    #[test]
    fn a_service_chain_rewrites_the_forwarding_headers() {
        let config = crate::config::Config::parse(
            "t.toml".as_ref(),
            "[dataplane]\ninterfaces = [\"lo\"]\n[[service]]\nname = \"api\"\nvip = \"127.0.0.1:8080\"\n\
             mode = \"http\"\n[[service.backend]]\naddress = \"127.0.0.2:80\"\n",
        )
        .unwrap();
        let settings = config.services[0].mode.http().unwrap();
        let chain = Chain::for_service(settings, true);
        assert_eq!(chain.names(), vec!["forwarding"]);
        let mut h = head("/");
        h.headers
            .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        chain.run(&mut h, &client(), &mut Held::new()).unwrap();
        // An untrusted client's own X-Forwarded-For is replaced, not extended.
        assert_eq!(h.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h.headers["x-forwarded-proto"], "https");
    }
}
