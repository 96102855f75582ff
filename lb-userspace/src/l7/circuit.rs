//! Circuit breaking and outlier ejection for one backend of one HTTP service.
//!
//! - **Limits.** At most `max_requests` requests in flight; a backend at its limit is skipped at
//!   once (the request moves on, or gets a fast 503 when every backend is full).
//! - **Ejection.** `consecutive_failures` gateway failures in a row (connect errors, resets and
//!   timeouts of the backend's answer, `failure_statuses`; see [`super::decide`]) open the
//!   circuit for `base_ejection`, doubling with each ejection up to `max_ejection` (Envoy's
//!   outlier detection), unless the service's ejection cap says no ([`crate::ejection`]). The
//!   ejection is also reported to the health engine, so L4 services on the same backend stop
//!   sending it new flows.
//! - **Probation.** When the time is up the circuit is half open: one request goes through.
//!   Success closes the circuit; failure opens it again for the next, longer, time.
//! - **429.** A backend that answered 429 cools down for its `Retry-After` (capped): new requests
//!   skip it, without counting a failure.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{config::CircuitPolicy, ejection::Backoff};

/// Why a backend cannot take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Ejected, or on probation with its one request in flight.
    Open,
    /// At `max_requests`.
    Full,
    /// Honouring a 429's Retry-After.
    Cooling,
}

/// The circuit's state (linkerd2-proxy's and Envoy's three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking requests; `failures` gateway failures in a row so far.
    Closed { failures: u32 },
    /// Ejected until `until`.
    Open { until: Instant },
    /// The ejection is over: one request at a time decides.
    Probation { probing: bool },
}

impl Default for Phase {
    fn default() -> Self {
        Phase::Closed { failures: 0 }
    }
}

#[derive(Debug, Default)]
struct State {
    phase: Phase,
    backoff: Backoff,
    cooling_until: Option<Instant>,
}

/// What a failure did to the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Counted; the circuit stays as it was.
    Counted,
    /// The circuit opened for this long.
    Opened(Duration),
    /// It would have opened, but the service's ejection cap refused; the run starts over.
    Capped,
}

/// One backend's circuit.
#[derive(Debug, Default)]
pub struct Breaker {
    in_flight: AtomicU32,
    state: Mutex<State>,
}

/// A request admitted to a backend; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.probe {
            let mut s = self.breaker.lock();
            if s.phase == (Phase::Probation { probing: true }) {
                s.phase = Phase::Probation { probing: false };
            }
        }
    }
}

impl Breaker {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a request, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        policy: &CircuitPolicy,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        let mut s = self.lock();
        if s.cooling_until.is_some_and(|t| now < t) {
            return Err(Refusal::Cooling);
        }
        let probe = match s.phase {
            Phase::Open { until } if now < until => return Err(Refusal::Open),
            Phase::Open { .. } | Phase::Probation { probing: false } => true,
            Phase::Probation { probing: true } => return Err(Refusal::Open),
            Phase::Closed { .. } => false,
        };
        if self.in_flight.load(Ordering::Acquire) >= policy.max_requests {
            return Err(Refusal::Full);
        }
        if probe {
            s.phase = Phase::Probation { probing: true };
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Permit {
            breaker: self.clone(),
            probe,
        })
    }

    /// Records a success: resets the failure run and closes a circuit on probation.
    pub fn success(&self, now: Instant) {
        let mut s = self.lock();
        match s.phase {
            Phase::Closed { .. } => s.phase = Phase::default(),
            Phase::Probation { .. } => {
                s.phase = Phase::default();
                s.backoff.back(now);
            }
            Phase::Open { .. } => {}
        }
    }

    /// Records a gateway failure. `may_eject` is the service's ejection cap's answer; a failed
    /// probation reopens whatever it says, since the backend is out already.
    pub fn failure(&self, policy: &CircuitPolicy, now: Instant, may_eject: bool) -> Failed {
        let mut s = self.lock();
        match s.phase {
            Phase::Open { .. } => return Failed::Counted,
            Phase::Closed { failures } if failures + 1 < policy.consecutive_failures => {
                s.phase = Phase::Closed {
                    failures: failures + 1,
                };
                return Failed::Counted;
            }
            Phase::Closed { .. } if !may_eject => {
                s.phase = Phase::default();
                return Failed::Capped;
            }
            Phase::Closed { .. } | Phase::Probation { .. } => {}
        }
        let backoff = s
            .backoff
            .next(now, policy.base_ejection, policy.max_ejection);
        s.phase = Phase::Open {
            until: now + backoff,
        };
        Failed::Opened(backoff)
    }

    /// Keeps new requests off the backend until `until` (a 429's Retry-After).
    pub fn cool_down(&self, until: Instant) {
        let mut s = self.lock();
        s.cooling_until = Some(s.cooling_until.map_or(until, |t| t.max(until)));
    }

    /// Whether the circuit holds the backend out: open, or on probation until a request
    /// succeeds.
    pub fn ejected(&self) -> bool {
        matches!(
            self.lock().phase,
            Phase::Open { .. } | Phase::Probation { .. }
        )
    }

    #[cfg(test)]
    fn phase(&self) -> Phase {
        self.lock().phase
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy {
            max_requests: 2,
            max_pending: 2,
            consecutive_failures: 3,
            failure_statuses: vec![502, 503, 504],
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
        }
    }

    #[test]
    fn consecutive_failures_open_then_probation_closes() {
        let p = policy();
        let b = Arc::new(Breaker::default());
        let t0 = Instant::now();
        assert_eq!(b.failure(&p, t0, true), Failed::Counted);
        b.success(t0);
        assert_eq!(b.failure(&p, t0, true), Failed::Counted);
        assert_eq!(b.failure(&p, t0, true), Failed::Counted);
        assert_eq!(
            b.failure(&p, t0, true),
            Failed::Opened(Duration::from_secs(1))
        );
        assert_eq!(b.admit(&p, t0).unwrap_err(), Refusal::Open);
        let t1 = t0 + Duration::from_millis(1001);
        let probe = b.admit(&p, t1).expect("probation admits one");
        assert_eq!(b.admit(&p, t1).unwrap_err(), Refusal::Open, "only one");
        b.success(t1);
        drop(probe);
        assert_eq!(b.phase(), Phase::Closed { failures: 0 });
        let _a = b.admit(&p, t1).unwrap();
        let _b = b.admit(&p, t1).unwrap();
        assert_eq!(b.admit(&p, t1).unwrap_err(), Refusal::Full, "max_requests");
    }

    #[test]
    fn a_failed_probation_doubles_the_ejection_up_to_the_cap() {
        let p = policy();
        let b = Arc::new(Breaker::default());
        let mut t = Instant::now();
        for _ in 0..3 {
            b.failure(&p, t, true);
        }
        let mut backoffs = Vec::new();
        for _ in 0..3 {
            t += Duration::from_secs(4);
            let _probe = b.admit(&p, t).unwrap();
            backoffs.push(b.failure(&p, t, false));
        }
        let s = Duration::from_secs;
        let opened = |d| Failed::Opened(s(d));
        assert_eq!(
            backoffs,
            vec![opened(2), opened(3), opened(3)],
            "a failed probation reopens even when the cap is full"
        );
    }

    #[test]
    fn a_429_cools_down_without_a_failure() {
        let p = policy();
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        b.cool_down(t + Duration::from_secs(2));
        assert_eq!(b.admit(&p, t).unwrap_err(), Refusal::Cooling);
        assert!(b.admit(&p, t + Duration::from_secs(2)).is_ok());
        assert_eq!(b.phase(), Phase::Closed { failures: 0 });
    }

    #[test]
    fn the_cap_refuses_an_ejection_and_the_run_starts_over() {
        let p = policy();
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        b.failure(&p, t, false);
        b.failure(&p, t, false);
        assert_eq!(b.failure(&p, t, false), Failed::Capped);
        assert_eq!(b.phase(), Phase::Closed { failures: 0 });
        assert!(b.admit(&p, t).is_ok(), "still in service");
        b.failure(&p, t, true);
        b.failure(&p, t, true);
        assert!(matches!(b.failure(&p, t, true), Failed::Opened(_)));
        assert!(b.ejected());
    }
}
