//! What one attempt's outcome means, as a pure function: whether the request goes on to the next
//! backend, and whether the outcome is evidence against the backend. The retry loop in
//! [`super::proxy`] only carries the decision out. Each row of the README's behaviour table is a
//! row of this module's test.
//!
//! Evidence against a backend is only what the backend alone is responsible for (Envoy's
//! `consecutive_gateway_failure`): a refused or failed connect, a reset or close before the
//! response headers, no answer within the per-try timeout counted from the end of the request
//! body, and the statuses in `failure_statuses` (default 502, 503, 504). A 500 or 501 is the
//! application's answer to that request, and a slow upload is the client's pace: neither counts.

use hyper::{Method, StatusCode};

use crate::config::{CircuitPolicy, RetryPolicy};

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response headers arrived with this status.
    Answered(StatusCode),
    /// The connection could not be made: nothing was sent.
    NotSent,
    /// Sent, but the connection was reset or closed before the response headers.
    Reset,
    /// The backend did not answer within the per-try timeout after the request was sent.
    TimedOut,
    /// The client's body did not arrive before the deadline: the client's fault.
    UploadTimedOut,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// Try the next backend (if tries, budget and deadline allow).
    pub retry: bool,
    /// Count a gateway failure against this backend's circuit; otherwise a success.
    pub failure: bool,
    /// Keep new requests off the backend for its `Retry-After`.
    pub cool_down: bool,
}

/// Whether a request may be sent again after a backend saw it: an idempotent method (RFC 9110
/// §9.2.2), or any method with `non_idempotent`.
pub fn repeatable(method: &Method, policy: &RetryPolicy) -> bool {
    policy.non_idempotent
        || matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
}

/// The decision for `outcome`. `repeatable` is [`repeatable`]'s answer for the request, and
/// `body_kept` whether its body is held whole (so another attempt can send it).
pub fn decide(
    outcome: Outcome,
    repeatable: bool,
    body_kept: bool,
    retry: &RetryPolicy,
    circuit: &CircuitPolicy,
) -> Next {
    let may_repeat = repeatable && body_kept;
    match outcome {
        Outcome::Answered(status) => {
            let code = status.as_u16();
            let cool_down = status == StatusCode::TOO_MANY_REQUESTS && retry.on_429;
            Next {
                retry: (retry.on_status.contains(&code) || cool_down) && may_repeat,
                failure: circuit.failure_statuses.contains(&code),
                cool_down,
            }
        }
        Outcome::NotSent => Next {
            retry: true,
            failure: true,
            cool_down: false,
        },
        Outcome::Reset | Outcome::TimedOut => Next {
            retry: may_repeat,
            failure: true,
            cool_down: false,
        },
        Outcome::UploadTimedOut => Next {
            retry: false,
            failure: false,
            cool_down: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_behaviour_table() {
        let retry = RetryPolicy::default();
        let circuit = CircuitPolicy::default();
        let s = |c| Outcome::Answered(StatusCode::from_u16(c).unwrap());
        let (get, post) = (Method::GET, Method::POST);
        // (the backend..., method, body kept, retry, failure, cool down)
        let rows = [
            ("answers 200", s(200), &get, true, false, false, false),
            ("answers 404", s(404), &get, true, false, false, false),
            (
                "refuses the connection (GET)",
                Outcome::NotSent,
                &get,
                true,
                true,
                true,
                false,
            ),
            (
                "refuses the connection (POST, streamed)",
                Outcome::NotSent,
                &post,
                false,
                true,
                true,
                false,
            ),
            ("answers 502", s(502), &get, true, true, true, false),
            ("answers 503", s(503), &get, true, true, true, false),
            ("answers 504", s(504), &get, true, true, true, false),
            (
                "answers 503 to a streamed GET",
                s(503),
                &get,
                false,
                false,
                true,
                false,
            ),
            (
                "answers 503 to a POST",
                s(503),
                &post,
                true,
                false,
                true,
                false,
            ),
            (
                "answers 500: the application's answer",
                s(500),
                &get,
                true,
                false,
                false,
                false,
            ),
            (
                "answers 501: an unknown method",
                s(501),
                &get,
                true,
                false,
                false,
                false,
            ),
            ("answers 429", s(429), &get, true, true, false, true),
            (
                "answers 429 to a POST",
                s(429),
                &post,
                true,
                false,
                false,
                true,
            ),
            (
                "resets before the headers",
                Outcome::Reset,
                &get,
                true,
                true,
                true,
                false,
            ),
            (
                "resets before the headers (POST)",
                Outcome::Reset,
                &post,
                true,
                false,
                true,
                false,
            ),
            (
                "takes longer than per_try_timeout",
                Outcome::TimedOut,
                &get,
                true,
                true,
                true,
                false,
            ),
            (
                "waits for a slow upload",
                Outcome::UploadTimedOut,
                &get,
                false,
                false,
                false,
                false,
            ),
        ];
        for (what, outcome, method, kept, want_retry, want_failure, want_cool) in rows {
            let next = decide(outcome, repeatable(method, &retry), kept, &retry, &circuit);
            assert_eq!(
                next,
                Next {
                    retry: want_retry,
                    failure: want_failure,
                    cool_down: want_cool,
                },
                "the backend {what}"
            );
        }
    }

    #[test]
    fn failure_statuses_and_non_idempotent_are_honoured() {
        let mut retry = RetryPolicy::default();
        let circuit = CircuitPolicy {
            failure_statuses: vec![500],
            ..Default::default()
        };
        let s = |c| Outcome::Answered(StatusCode::from_u16(c).unwrap());
        assert!(decide(s(500), true, true, &retry, &circuit).failure);
        assert!(!decide(s(503), true, true, &retry, &circuit).failure);
        retry.non_idempotent = true;
        assert!(
            decide(
                s(503),
                repeatable(&Method::POST, &retry),
                true,
                &retry,
                &circuit
            )
            .retry
        );
    }
}
