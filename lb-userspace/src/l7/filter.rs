//! The request-filter chain: what every request passes through before a backend is chosen, in
//! the manner of Envoy's HTTP filters and Pingora's `request_filter` phase.
//!
//! A filter sees the request head and the client. It may rewrite the head, and it either lets the
//! request through or answers it itself (a 401, a 403, a 429...), in which case no backend is
//! chosen, no body is read and nothing counts against any backend. Refusals are counted per
//! filter in `understudy_http_filter_refusals` and logged at debug level.
//!
//! Filters run in order; the chain stops at the first that answers. Today's chain is the header
//! rewrite ([`super::headers::Forwarding`]). Authentication and rate limits plug in as one file
//! each: a type implementing [`RequestFilter`], and a line in [`Chain::for_service`] that places
//! it (before the rewrite, so a refused request's headers are never touched).

use hyper::{StatusCode, http::request::Parts};

use super::headers::{ClientInfo, Forwarding};
use crate::config::HttpService;

/// A filter's decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the request on, to the next filter or to backend selection.
    Continue,
    /// Answer the client with this status and reason; the request goes no further.
    Respond { status: StatusCode, reason: String },
}

/// One step of the chain. Synchronous: a filter decides from the head and its own state (a
/// token check, a bucket), never by waiting on the network.
pub trait RequestFilter: Send + Sync {
    /// Its name in metrics and logs, such as "forwarding" or "rate_limit".
    fn name(&self) -> &'static str;

    fn on_request(&self, head: &mut Parts, client: &ClientInfo) -> Verdict;
}

/// A request a filter answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub filter: &'static str,
    pub status: StatusCode,
    pub reason: String,
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

    /// Runs every filter in order until one answers.
    pub fn run(&self, head: &mut Parts, client: &ClientInfo) -> Result<(), Refused> {
        for f in &self.filters {
            if let Verdict::Respond { status, reason } = f.on_request(head, client) {
                return Err(Refused {
                    filter: f.name(),
                    status,
                    reason,
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

        fn on_request(&self, head: &mut Parts, _: &ClientInfo) -> Verdict {
            self.0.fetch_add(1, Ordering::Relaxed);
            if head.uri.path() == "/private" {
                Verdict::Respond {
                    status: StatusCode::FORBIDDEN,
                    reason: "private".into(),
                }
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
        let refused = chain.run(&mut h, &client()).unwrap_err();
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
        chain.run(&mut h, &client()).unwrap();
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
        chain.run(&mut h, &client()).unwrap();
        // An untrusted client's own X-Forwarded-For is replaced, not extended.
        assert_eq!(h.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h.headers["x-forwarded-proto"], "https");
    }
}
