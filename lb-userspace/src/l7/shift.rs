//! Error- and latency-based failover between the pools of a route's chain: the gateway's "use the
//! backup when the primary is unavailable *or exceeds a threshold of errors*".
//!
//! Each pool of the chain keeps a sliding window (ten buckets over `window`) of its attempts: how
//! many, how many were gateway failures (as the circuits count them: `failure_statuses`, by
//! default 502, 503, 504; connect failures, resets, timeouts), and
//! their response times in a log-scale histogram. A pool whose window holds at least
//! `min_requests` attempts and whose error share passes `error_threshold`, or whose
//! `latency_quantile` passes `latency_threshold`, is *tripped*: new requests go to the first
//! pool of the chain that is not. Its window is then cleared, so what follows is judged on fresh
//! evidence: `probe_ratio` of the route's requests still go to a tripped pool, and once it has
//! stayed under both thresholds for `hold` (with no error at all while it has fewer than
//! `min_requests` attempts) the route moves back. When every pool is tripped the primary serves:
//! no pool is known to be better.
//!
//! Health is separate: a pool with no backend up is skipped by the retry walk whatever this
//! says. Every move is logged with its reason and counted.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::config::Failover;

const BUCKETS: usize = 10;
/// Latency classes: `floor(2 * log2(µs))`, so each is about 41% wide; 64 classes reach hours.
const CLASSES: usize = 64;

#[derive(Clone)]
struct Bucket {
    /// Which window slot this bucket last counted for (its start, in bucket widths).
    epoch: u64,
    attempts: u32,
    errors: u32,
    latency: [u32; CLASSES],
}

impl Bucket {
    fn empty() -> Bucket {
        Bucket {
            epoch: u64::MAX,
            attempts: 0,
            errors: 0,
            latency: [0; CLASSES],
        }
    }
}

fn class(latency: Duration) -> usize {
    let us = latency.as_micros().max(1) as f64;
    ((2.0 * us.log2()) as usize).min(CLASSES - 1)
}

/// A class's upper bound.
fn class_bound(c: usize) -> Duration {
    Duration::from_micros(2f64.powf((c + 1) as f64 / 2.0) as u64)
}

/// One pool's recent attempts.
#[derive(Clone)]
pub struct Window {
    width: Duration,
    start: Instant,
    buckets: Vec<Bucket>,
}

/// The sums over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub attempts: u32,
    pub errors: u32,
    /// The quantile asked for, as a class's upper bound; `None` without answered attempts.
    pub latency: Option<Duration>,
}

impl Window {
    pub fn new(window: Duration, start: Instant) -> Window {
        Window {
            width: window / BUCKETS as u32,
            start,
            buckets: vec![Bucket::empty(); BUCKETS],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_nanos() / self.width.as_nanos().max(1)) as u64
    }

    pub fn record(&mut self, now: Instant, error: bool, latency: Option<Duration>) {
        let e = self.epoch(now);
        let b = &mut self.buckets[(e % BUCKETS as u64) as usize];
        if b.epoch != e {
            *b = Bucket::empty();
            b.epoch = e;
        }
        b.attempts += 1;
        b.errors += error as u32;
        if let Some(l) = latency {
            b.latency[class(l)] += 1;
        }
    }

    pub fn clear(&mut self) {
        self.buckets.fill(Bucket::empty());
    }

    /// The buckets still inside the window at `now`.
    pub fn totals(&self, now: Instant, quantile: f64) -> Totals {
        let e = self.epoch(now);
        let live =
            |b: &&Bucket| b.epoch != u64::MAX && b.epoch + (BUCKETS as u64) > e && b.epoch <= e;
        let mut t = Totals {
            attempts: 0,
            errors: 0,
            latency: None,
        };
        let mut classes = [0u32; CLASSES];
        for b in self.buckets.iter().filter(live) {
            t.attempts += b.attempts;
            t.errors += b.errors;
            for (c, n) in b.latency.iter().enumerate() {
                classes[c] += n;
            }
        }
        let answered: u32 = classes.iter().sum();
        if answered > 0 {
            let rank = ((answered as f64) * quantile).ceil().max(1.0) as u32;
            let mut seen = 0;
            for (c, n) in classes.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    t.latency = Some(class_bound(c));
                    break;
                }
            }
        }
        t
    }
}

/// Why a pool is judged over its thresholds.
fn over(t: &Totals, cfg: &Failover) -> Option<String> {
    if t.attempts < cfg.min_requests {
        return None;
    }
    let share = t.errors as f64 / t.attempts as f64;
    if share > cfg.error_threshold {
        return Some(format!(
            "gateway errors {:.0}% of {} attempts over {:?} (threshold {:.0}%)",
            share * 100.0,
            t.attempts,
            cfg.window,
            cfg.error_threshold * 100.0
        ));
    }
    match (cfg.latency_threshold, t.latency) {
        (Some(limit), Some(l)) if l > limit => Some(format!(
            "p{} latency about {l:?} over {} attempts (threshold {limit:?})",
            (cfg.latency_quantile * 100.0).round(),
            t.attempts
        )),
        _ => None,
    }
}

struct PoolState {
    window: Window,
    /// Since when, and why, the pool is tripped.
    tripped: Option<(Instant, String)>,
    /// While tripped: since when it has been under both thresholds.
    healthy_since: Option<Instant>,
}

/// The route's pool now, as `/status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Serving {
    /// Index in the chain.
    pub pool: usize,
    /// Why not the primary; `None` when the primary serves.
    pub reason: Option<String>,
    pub since: Instant,
}

/// A move between pools, for the caller to count.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    pub from: usize,
    pub to: usize,
    /// "errors", "latency" or "recovered".
    pub kind: &'static str,
    pub reason: String,
}

/// One route's failover state; shared by its requests, kept across reloads while the chain is
/// the same.
pub struct RouteState {
    cfg: Failover,
    pools: Vec<String>,
    inner: Mutex<Inner>,
}

struct Inner {
    pools: Vec<PoolState>,
    serving: Serving,
}

impl RouteState {
    pub fn new(cfg: Failover, pools: Vec<String>, now: Instant) -> RouteState {
        let states = pools
            .iter()
            .map(|_| PoolState {
                window: Window::new(cfg.window, now),
                tripped: None,
                healthy_since: None,
            })
            .collect();
        RouteState {
            cfg,
            pools,
            inner: Mutex::new(Inner {
                pools: states,
                serving: Serving {
                    pool: 0,
                    reason: None,
                    since: now,
                },
            }),
        }
    }

    pub fn config(&self) -> &Failover {
        &self.cfg
    }

    pub fn chain(&self) -> &[String] {
        &self.pools
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool a new request starts at: the serving one, or (a `probe_ratio` share of the
    /// time) a tripped pool before it, so its recovery can be seen.
    pub fn start(&self, dice: f64) -> usize {
        let inner = self.lock();
        let s = inner.serving.pool;
        if s > 0 && dice < self.cfg.probe_ratio {
            let tripped: Vec<usize> = (0..s)
                .filter(|&i| inner.pools[i].tripped.is_some())
                .collect();
            if !tripped.is_empty() {
                // Spread the probes over the tripped pools with the same dice.
                let k = ((dice / self.cfg.probe_ratio) * tripped.len() as f64) as usize;
                return tripped[k.min(tripped.len() - 1)];
            }
        }
        s
    }

    pub fn serving(&self) -> Serving {
        self.lock().serving.clone()
    }

    /// One attempt on chain pool `pool` ended: `error` if it was a gateway error, `latency` the
    /// time to its response headers when it was answered.
    pub fn record(
        &self,
        route: (&str, &str),
        pool: usize,
        now: Instant,
        error: bool,
        latency: Option<Duration>,
    ) -> Option<Shift> {
        let mut inner = self.lock();
        let cfg = &self.cfg;
        let p = &mut inner.pools[pool];
        p.window.record(now, error, latency);
        let totals = p.window.totals(now, cfg.latency_quantile);
        let mut changed = false;
        match (&p.tripped, over(&totals, cfg)) {
            (None, Some(reason)) => {
                p.tripped = Some((now, reason));
                p.healthy_since = None;
                p.window.clear();
                changed = true;
            }
            (None, None) => {}
            (Some(_), Some(_)) => p.healthy_since = None,
            (Some(_), None) => {
                let clean = totals.attempts >= cfg.min_requests || totals.errors == 0;
                if clean {
                    let since = *p.healthy_since.get_or_insert(now);
                    if now.duration_since(since) >= cfg.hold {
                        p.tripped = None;
                        p.healthy_since = None;
                        changed = true;
                    }
                } else {
                    p.healthy_since = None;
                }
            }
        }
        if !changed {
            return None;
        }
        let before = inner.serving.pool;
        let next = inner
            .pools
            .iter()
            .position(|p| p.tripped.is_none())
            .unwrap_or(0);
        if next == before {
            return None;
        }
        let (service, route) = route;
        let shift = if next > before {
            let why = inner.pools[before]
                .tripped
                .as_ref()
                .map_or_else(String::new, |(_, r)| r.clone());
            let kind = if why.starts_with("gateway errors") {
                "errors"
            } else {
                "latency"
            };
            warn!(service, route, from = %self.pools[before], to = %self.pools[next], reason = %why, "route moves new requests to its next pool");
            Shift {
                from: before,
                to: next,
                kind,
                reason: why,
            }
        } else {
            let why = format!(
                "pool {} under its thresholds for {:?}",
                self.pools[next], cfg.hold
            );
            info!(service, route, from = %self.pools[before], to = %self.pools[next], reason = %why, "route moves back");
            Shift {
                from: before,
                to: next,
                kind: "recovered",
                reason: why,
            }
        };
        let reason = (next > 0).then(|| {
            let (pool, (_, why)) = inner
                .pools
                .iter()
                .enumerate()
                .find_map(|(i, p)| p.tripped.as_ref().map(|t| (i, t)))
                .expect("a pool before the serving one is tripped");
            format!("{} tripped: {why}", self.pools[pool])
        });
        inner.serving = Serving {
            pool: next,
            reason,
            since: now,
        };
        Some(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Failover {
        Failover {
            error_threshold: 0.2,
            latency_threshold: Some(Duration::from_millis(100)),
            latency_quantile: 0.9,
            min_requests: 10,
            window: Duration::from_secs(1),
            probe_ratio: 0.1,
            hold: Duration::from_secs(2),
        }
    }

    const R: (&str, &str) = ("svc", "r");

    #[test]
    fn errors_trip_the_primary_and_a_clean_hold_brings_it_back() {
        let t0 = Instant::now();
        let s = RouteState::new(cfg(), vec!["a".into(), "b".into()], t0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // 30% errors over 10 attempts: over 20%.
        let mut shift = None;
        for i in 0..10 {
            shift = shift.or(s.record(R, 0, ms(i), i % 3 == 0, Some(Duration::from_millis(1))));
        }
        let shift = shift.expect("tripped");
        assert_eq!((shift.from, shift.to, shift.kind), (0, 1, "errors"));
        assert_eq!(s.serving().pool, 1);
        assert!(
            s.serving()
                .reason
                .unwrap()
                .starts_with("a tripped: gateway errors")
        );
        // Probes: below probe_ratio they go to a, above to b.
        assert_eq!(s.start(0.05), 0);
        assert_eq!(s.start(0.5), 1);
        // An error during the hold restarts it.
        assert_eq!(
            s.record(R, 0, ms(100), false, Some(Duration::from_millis(1))),
            None
        );
        assert_eq!(s.record(R, 0, ms(1500), true, None), None);
        assert_eq!(
            s.record(R, 0, ms(2200), false, Some(Duration::from_millis(1))),
            None
        );
        assert_eq!(
            s.serving().pool,
            1,
            "the error at 1.5 s is still in the window"
        );
        // Clean from 2.6 s (the error has left the 1 s window) for the 2 s hold.
        for k in 0..30 {
            let r = s.record(
                R,
                0,
                ms(2600 + k * 100),
                false,
                Some(Duration::from_millis(1)),
            );
            if let Some(shift) = r {
                assert_eq!((shift.from, shift.to, shift.kind), (1, 0, "recovered"));
                assert!(
                    2600 + k * 100 >= 4600,
                    "moved back after {} ms",
                    2600 + k * 100
                );
                assert_eq!(
                    s.serving(),
                    Serving {
                        pool: 0,
                        reason: None,
                        since: ms(2600 + k * 100)
                    }
                );
                return;
            }
        }
        panic!("never moved back");
    }

    #[test]
    fn latency_trips_only_above_its_quantile_and_few_attempts_decide_nothing() {
        let t0 = Instant::now();
        let s = RouteState::new(cfg(), vec!["a".into(), "b".into()], t0);
        // 9 slow attempts: under min_requests.
        for i in 0..9 {
            assert_eq!(
                s.record(
                    R,
                    0,
                    t0 + Duration::from_millis(i),
                    false,
                    Some(Duration::from_millis(500))
                ),
                None
            );
        }
        let shift = s
            .record(
                R,
                0,
                t0 + Duration::from_millis(9),
                false,
                Some(Duration::from_millis(500)),
            )
            .unwrap();
        assert_eq!(shift.kind, "latency");
        assert!(shift.reason.contains("p90"), "{}", shift.reason);

        // Fast answers with one slow in twenty: the p90 stays fast.
        let s = RouteState::new(cfg(), vec!["a".into(), "b".into()], t0);
        for i in 0..50 {
            let l = if i % 20 == 0 { 500 } else { 2 };
            assert_eq!(
                s.record(
                    R,
                    0,
                    t0 + Duration::from_millis(i),
                    false,
                    Some(Duration::from_millis(l))
                ),
                None
            );
        }
    }

    #[test]
    fn the_window_forgets_old_buckets() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(1), t0);
        w.record(t0, true, None);
        w.record(
            t0 + Duration::from_millis(950),
            false,
            Some(Duration::from_millis(3)),
        );
        let t = w.totals(t0 + Duration::from_millis(990), 0.5);
        assert_eq!((t.attempts, t.errors), (2, 1));
        assert!(t.latency.unwrap() >= Duration::from_millis(3));
        let t = w.totals(t0 + Duration::from_millis(1050), 0.5);
        assert_eq!(
            (t.attempts, t.errors),
            (1, 0),
            "the first bucket left the window"
        );
        let t = w.totals(t0 + Duration::from_millis(2100), 0.5);
        assert_eq!(t.attempts, 0);
    }
}
