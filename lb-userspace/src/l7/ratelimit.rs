//! A route's rate limit (`rate_limit`): requests per second with a burst (a GCRA token bucket,
//! `governor`), and requests in progress at once, per consumer (anonymous callers: per client
//! address) or for the whole route.
//!
//! Over the limit the answer is 429 with `Retry-After` and the `RateLimit` and
//! `RateLimit-Policy` fields of the IETF draft (draft-ietf-httpapi-ratelimit-headers-09):
//! `RateLimit-Policy: "<service>/<route>";q=<burst>;w=<seconds to refill the burst>` and
//! `RateLimit: "<service>/<route>";r=0;t=<seconds until the next request is admitted>`. Admitted
//! responses carry neither, which keeps the path that is never limited as cheap as without a
//! limit.
//!
//! Limits are the node's own: N nodes behind ECMP admit up to N times the rate in all, each
//! its share of the callers. Buckets start full when a config is loaded (a reload refills them).
//! Buckets indistinguishable from a full one are forgotten every few thousand requests, so a
//! stream of distinct client addresses cannot grow the table without bound.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{
    Quota, RateLimiter, clock::Clock, middleware::StateInformationMiddleware,
    state::keyed::DashMapStateStore,
};
use hyper::{
    StatusCode, header,
    http::{HeaderName, HeaderValue, request::Parts},
};

use super::{
    auth::Caller,
    filter::{Held, RequestFilter, Verdict},
    headers::ClientInfo,
};
use crate::config::{LimitPer, RouteLimit};

/// Whose bucket a request is counted in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Route,
    Consumer(Arc<str>),
    Address(IpAddr),
}

/// Checks between sweeps of buckets that are full again.
const SWEEP_EVERY: u64 = 4096;

type Limiter<C> = RateLimiter<Key, DashMapStateStore<Key>, C, StateInformationMiddleware>;

struct Bucket<C: Clock> {
    limiter: Limiter<C>,
    policy: HeaderValue,
}

/// Requests in progress per key.
type Counts = Arc<Mutex<HashMap<Key, u32>>>;

/// A request's place in a concurrency limit, given back when its response ends.
struct Slot {
    key: Key,
    counts: Counts,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

/// The `rate_limit` filter of one route, on clock `C` (a fake one in tests).
pub struct RateLimit<C: Clock + Clone> {
    name: String,
    per: LimitPer,
    bucket: Option<Bucket<C>>,
    concurrent: Option<(u32, Counts)>,
    clock: C,
    checks: AtomicU64,
}

fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl<C: Clock + Clone> RateLimit<C>
where
    C::Instant: governor::clock::Reference,
{
    /// `name` ("service/route") names the policy in the `RateLimit` fields.
    pub fn new(name: &str, limit: &RouteLimit, clock: C) -> RateLimit<C> {
        let bucket = limit.rate.map(|(rate, burst)| {
            let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
            let burst_n = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period)
                .expect("a positive period")
                .allow_burst(burst_n);
            let refill = seconds(period * burst).max(1);
            RateLimit::<C>::bucket(name, quota, refill, &clock, burst)
        });
        RateLimit {
            name: name.to_string(),
            per: limit.per,
            bucket,
            concurrent: limit.concurrent.map(|n| (n, Counts::default())),
            clock,
            checks: AtomicU64::new(0),
        }
    }

    fn bucket(name: &str, quota: Quota, refill: u64, clock: &C, burst: u32) -> Bucket<C> {
        Bucket {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            policy: HeaderValue::from_str(&format!("\"{name}\";q={burst};w={refill}"))
                .expect("names are header-safe"),
        }
    }

    fn key(&self, head: &Parts, client: &ClientInfo) -> Key {
        match (self.per, head.extensions.get::<Caller>()) {
            (LimitPer::Route, _) => Key::Route,
            (LimitPer::Consumer, Some(c)) => Key::Consumer(c.0.clone()),
            (LimitPer::Consumer, None) => Key::Address(client.addr.ip().to_canonical()),
        }
    }

    fn too_many(&self, reason: String, wait: u64, policy: Option<&HeaderValue>) -> Verdict {
        let wait = wait.max(1);
        let mut headers: Vec<(HeaderName, HeaderValue)> =
            vec![(header::RETRY_AFTER, HeaderValue::from(wait))];
        if let Some(p) = policy {
            headers.push((HeaderName::from_static("ratelimit-policy"), p.clone()));
            let now = format!("\"{}\";r=0;t={wait}", self.name);
            if let Ok(v) = HeaderValue::from_str(&now) {
                headers.push((HeaderName::from_static("ratelimit"), v));
            }
        }
        Verdict::Respond {
            status: StatusCode::TOO_MANY_REQUESTS,
            reason,
            headers,
        }
    }
}

impl<C: Clock + Clone + Send + Sync> RequestFilter for RateLimit<C>
where
    C::Instant: governor::clock::Reference + Send + Sync,
{
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn on_request(&self, head: &mut Parts, client: &ClientInfo, held: &mut Held) -> Verdict {
        let key = self.key(head, client);
        // The concurrency slot first: a request it refuses spends none of the rate.
        let mut slot = None;
        if let Some((max, counts)) = &self.concurrent {
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            let n = c.entry(key.clone()).or_insert(0);
            if *n >= *max {
                return self.too_many(
                    format!("rate limited: {max} requests already in progress"),
                    1,
                    None,
                );
            }
            *n += 1;
            slot = Some(Slot {
                key: key.clone(),
                counts: counts.clone(),
            });
        }
        if let Some(b) = &self.bucket {
            if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                b.limiter.retain_recent();
                b.limiter.shrink_to_fit();
            }
            if let Err(not_until) = b.limiter.check_key(&key) {
                let wait = not_until.wait_time_from(self.clock.now());
                return self.too_many(
                    "rate limited: over the route's request rate".into(),
                    seconds(wait),
                    Some(&b.policy),
                );
            }
        }
        if let Some(s) = slot {
            held.push(Box::new(s));
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;
    use hyper::Request;

    use super::*;

    fn head(consumer: Option<&str>) -> Parts {
        let mut p = Request::get("/").body(()).unwrap().into_parts().0;
        if let Some(c) = consumer {
            p.extensions.insert(Caller(c.into()));
        }
        p
    }

    fn client(ip: &str) -> ClientInfo {
        ClientInfo::new(format!("{ip}:40000").parse().unwrap(), &[])
    }

    fn limit(rate: Option<(f64, u32)>, concurrent: Option<u32>) -> RouteLimit {
        RouteLimit {
            rate,
            per: LimitPer::Consumer,
            concurrent,
        }
    }

    fn header<'a>(v: &'a Verdict, name: &str) -> &'a str {
        let Verdict::Respond { headers, .. } = v else {
            panic!("not refused: {v:?}")
        };
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
    }

    #[test]
    fn the_bucket_refills_at_the_configured_rate() {
        let clock = FakeRelativeClock::default();
        // 2 per second, burst 4: a token every 500 ms.
        let f = RateLimit::new("api/orders", &limit(Some((2.0, 4)), None), clock.clone());
        let c = client("192.0.2.1");
        let mut held = Held::new();
        for i in 0..4 {
            assert_eq!(
                f.on_request(&mut head(Some("alice")), &c, &mut held),
                Verdict::Continue,
                "request {i} of the burst"
            );
        }
        let refused = f.on_request(&mut head(Some("alice")), &c, &mut held);
        let Verdict::Respond { status, .. } = &refused else {
            panic!("the fifth request passed")
        };
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&refused, "retry-after"), "1");
        assert_eq!(
            header(&refused, "ratelimit-policy"),
            "\"api/orders\";q=4;w=2"
        );
        assert_eq!(header(&refused, "ratelimit"), "\"api/orders\";r=0;t=1");

        // Another consumer has its own bucket.
        assert_eq!(
            f.on_request(&mut head(Some("bob")), &c, &mut held),
            Verdict::Continue
        );
        // 499 ms later there is still no token; at 500 ms there is one, and only one.
        clock.advance(Duration::from_millis(499));
        assert_ne!(
            f.on_request(&mut head(Some("alice")), &c, &mut held),
            Verdict::Continue
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            f.on_request(&mut head(Some("alice")), &c, &mut held),
            Verdict::Continue
        );
        assert_ne!(
            f.on_request(&mut head(Some("alice")), &c, &mut held),
            Verdict::Continue
        );
        // After two seconds the whole burst is back.
        clock.advance(Duration::from_secs(2));
        for _ in 0..4 {
            assert_eq!(
                f.on_request(&mut head(Some("alice")), &c, &mut held),
                Verdict::Continue
            );
        }
    }

    #[test]
    fn anonymous_callers_are_limited_per_address_and_slow_rates_wait_longer() {
        let clock = FakeRelativeClock::default();
        // One request every 4 seconds.
        let f = RateLimit::new("web/all", &limit(Some((0.25, 1)), None), clock.clone());
        let mut held = Held::new();
        let (a, b) = (client("192.0.2.1"), client("192.0.2.2"));
        assert_eq!(
            f.on_request(&mut head(None), &a, &mut held),
            Verdict::Continue
        );
        let refused = f.on_request(&mut head(None), &a, &mut held);
        assert_eq!(header(&refused, "retry-after"), "4");
        assert_eq!(header(&refused, "ratelimit-policy"), "\"web/all\";q=1;w=4");
        assert_eq!(
            f.on_request(&mut head(None), &b, &mut held),
            Verdict::Continue
        );
        clock.advance(Duration::from_millis(2500));
        assert_eq!(
            header(&f.on_request(&mut head(None), &a, &mut held), "retry-after"),
            "2",
            "1.5 s left, rounded up"
        );
    }

    #[test]
    fn a_concurrency_slot_is_held_until_the_response_ends() {
        let f = RateLimit::new("api/x", &limit(None, Some(2)), FakeRelativeClock::default());
        let c = client("192.0.2.1");
        let (mut one, mut two, mut three) = (Held::new(), Held::new(), Held::new());
        assert_eq!(
            f.on_request(&mut head(Some("a")), &c, &mut one),
            Verdict::Continue
        );
        assert_eq!(
            f.on_request(&mut head(Some("a")), &c, &mut two),
            Verdict::Continue
        );
        let refused = f.on_request(&mut head(Some("a")), &c, &mut three);
        assert_eq!(header(&refused, "retry-after"), "1");
        assert!(three.is_empty(), "a refused request holds nothing");
        // Someone else is not affected.
        assert_eq!(
            f.on_request(&mut head(Some("b")), &c, &mut three),
            Verdict::Continue
        );
        drop(one);
        let mut four = Held::new();
        assert_eq!(
            f.on_request(&mut head(Some("a")), &c, &mut four),
            Verdict::Continue
        );
    }
}
