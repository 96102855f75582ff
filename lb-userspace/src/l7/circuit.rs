//! Circuit breaking and outlier ejection for one backend of one HTTP service.
//!
//! - **Limits.** At most `max_requests` requests in flight; a backend at its limit is skipped at
//!   once (the request moves on, or gets a fast 503 when every backend is full).
//! - **Ejection.** `consecutive_failures` failures in a row (5xx, connect errors, resets,
//!   timeouts) open the circuit for `base_ejection`, doubling with each ejection up to
//!   `max_ejection` (Envoy's outlier detection). The ejection is also reported to the health
//!   engine, so L4 services on the same backend stop sending it new flows.
//! - **Probation.** When the time is up the circuit is half open: one request goes through.
//!   Success closes the circuit; failure opens it again for the next, longer, time.
//! - **429.** A backend that answered 429 cools down for its `Retry-After` (capped): new requests
//!   skip it, without counting a failure.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::config::CircuitPolicy;

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

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    ejections: u32,
    open_until: Option<Instant>,
    half_open: bool,
    probe_in_flight: bool,
    cooling_until: Option<Instant>,
    closed_since: Option<Instant>,
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
        if self.probe
            && let Ok(mut s) = self.breaker.state.lock()
        {
            s.probe_in_flight = false;
        }
    }
}

/// The circuit's state, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    HalfOpen,
}

impl Breaker {
    /// Admits a request, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        policy: &CircuitPolicy,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        let mut s = self.state.lock().map_err(|_| Refusal::Open)?;
        if s.cooling_until.is_some_and(|t| now < t) {
            return Err(Refusal::Cooling);
        }
        let mut probe = false;
        match s.open_until {
            Some(t) if now < t => return Err(Refusal::Open),
            Some(_) => {
                s.open_until = None;
                s.half_open = true;
            }
            None => {}
        }
        if s.half_open {
            if s.probe_in_flight {
                return Err(Refusal::Open);
            }
            probe = true;
        }
        if self.in_flight.load(Ordering::Acquire) >= policy.max_requests {
            return Err(Refusal::Full);
        }
        if probe {
            s.probe_in_flight = true;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Permit {
            breaker: self.clone(),
            probe,
        })
    }

    /// Records a success: resets the failure run and closes a half-open circuit.
    pub fn success(&self, now: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.consecutive = 0;
            if s.half_open {
                s.half_open = false;
                s.closed_since = Some(now);
            }
        }
    }

    /// Records a failure; returns the ejection time when this failure opened the circuit.
    pub fn failure(&self, policy: &CircuitPolicy, now: Instant) -> Option<Duration> {
        let mut s = self.state.lock().ok()?;
        s.consecutive += 1;
        if s.open_until.is_some() {
            return None;
        }
        if !s.half_open && s.consecutive < policy.consecutive_failures {
            return None;
        }
        // A backend that stayed closed longer than the longest ejection starts over.
        if s.closed_since
            .is_some_and(|t| now.duration_since(t) > policy.max_ejection)
        {
            s.ejections = 0;
        }
        s.ejections += 1;
        let backoff = policy
            .base_ejection
            .saturating_mul(1 << (s.ejections - 1).min(20))
            .min(policy.max_ejection);
        s.open_until = Some(now + backoff);
        s.half_open = false;
        s.consecutive = 0;
        Some(backoff)
    }

    /// Keeps new requests off the backend until `until` (a 429's Retry-After).
    pub fn cool_down(&self, until: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.cooling_until = Some(s.cooling_until.map_or(until, |t| t.max(until)));
        }
    }

    pub fn phase(&self, now: Instant) -> Phase {
        let Ok(s) = self.state.lock() else {
            return Phase::Open;
        };
        match s.open_until {
            Some(t) if now < t => Phase::Open,
            Some(_) => Phase::HalfOpen,
            None if s.half_open => Phase::HalfOpen,
            None => Phase::Closed,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
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
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
        }
    }

    #[test]
    fn consecutive_failures_open_then_probation_closes() {
        let p = policy();
        let b = Arc::new(Breaker::default());
        let t0 = Instant::now();
        assert_eq!(b.failure(&p, t0), None);
        b.success(t0);
        assert_eq!(b.failure(&p, t0), None);
        assert_eq!(b.failure(&p, t0), None);
        assert_eq!(b.failure(&p, t0), Some(Duration::from_secs(1)));
        assert_eq!(b.admit(&p, t0).unwrap_err(), Refusal::Open);
        let t1 = t0 + Duration::from_millis(1001);
        let probe = b.admit(&p, t1).expect("probation admits one");
        assert_eq!(b.admit(&p, t1).unwrap_err(), Refusal::Open, "only one");
        b.success(t1);
        drop(probe);
        assert_eq!(b.phase(t1), Phase::Closed);
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
            b.failure(&p, t);
        }
        let mut backoffs = Vec::new();
        for _ in 0..3 {
            t += Duration::from_secs(4);
            let _probe = b.admit(&p, t).unwrap();
            backoffs.push(b.failure(&p, t).unwrap());
        }
        let s = Duration::from_secs;
        assert_eq!(backoffs, vec![s(2), s(3), s(3)]);
    }

    #[test]
    fn a_429_cools_down_without_a_failure() {
        let p = policy();
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        b.cool_down(t + Duration::from_secs(2));
        assert_eq!(b.admit(&p, t).unwrap_err(), Refusal::Cooling);
        assert!(b.admit(&p, t + Duration::from_secs(2)).is_ok());
        assert_eq!(b.phase(t), Phase::Closed);
    }
}
