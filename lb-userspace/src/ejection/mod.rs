//! Passive ejection, shared by the health tasks (kernel evidence) and the L7 circuits (proxy
//! evidence): how long an ejection lasts ([`Backoff`]) and how many of a service's backends
//! passive evidence may hold out at once ([`max_ejected`], [`Gate`]).
//!
//! The cap is Envoy's `max_ejection_percent` with two differences, both chosen so that passive
//! evidence can never empty a service whose active checks pass:
//! - at least one backend may be ejected (as Envoy), but never the last one that is up;
//! - a backend that is already down by its active checks counts as out when the last one is
//!   judged, so a second, passive, ejection cannot finish the job.

mod backoff;
mod gate;

pub use backoff::Backoff;
pub use gate::{Gate, Refused, Standing};

/// Envoy's default share; one backend in small pools (fewer than 20).
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// How many of `n` backends passive evidence may hold out at once: `percent` of them, at least
/// one, never all of them.
pub fn max_ejected(n: usize, percent: u32) -> usize {
    if n <= 1 {
        return 0;
    }
    (n * percent as usize / 100).max(1).min(n - 1)
}

/// Whether passive evidence may hold out one more of a service's `members` backends, when
/// `ejected` of them are out on passive evidence already and `in_service` are up and not
/// ejected: fewer than [`max_ejected`] are out, and another backend stays in service.
pub fn may_eject(members: usize, ejected: usize, in_service: usize, percent: u32) -> bool {
    ejected < max_ejected(members, percent) && in_service > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_a_share_at_least_one_never_all() {
        let rows = [
            // (backends, percent, may be ejected)
            (0, 10, 0),
            (1, 100, 0),
            (2, 10, 1),
            (2, 100, 1),
            (10, 10, 1),
            (20, 10, 2),
            (25, 10, 2),
            (10, 50, 5),
            (10, 100, 9),
            (4, 0, 1),
        ];
        for (n, pct, want) in rows {
            assert_eq!(max_ejected(n, pct), want, "{n} backends at {pct}%");
        }
    }
}
