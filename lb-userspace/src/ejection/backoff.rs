//! How long one backend stays ejected: `base` for the first ejection, twice as long for each
//! further one, capped at `max`. A backend that stayed in service longer than `max` since its
//! last return starts over at `base`.

use std::time::{Duration, Instant};

/// One backend's ejection history. The lengths are passed in, not kept, so that a reload that
/// changes them applies to the next ejection.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    ejections: u32,
    /// When the backend last returned to service.
    back_since: Option<Instant>,
}

impl Backoff {
    /// The length of an ejection that starts at `now`, counted as one more.
    pub fn next(&mut self, now: Instant, base: Duration, max: Duration) -> Duration {
        if self
            .back_since
            .is_some_and(|t| now.saturating_duration_since(t) > max)
        {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        base.saturating_mul(1 << (self.ejections - 1).min(20))
            .min(max)
    }

    /// The backend is back in service as of `now`.
    pub fn back(&mut self, now: Instant) {
        self.back_since = Some(now);
    }

    /// Ejections so far in the current run.
    pub fn count(&self) -> u32 {
        self.ejections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_calm_spell() {
        let s = Duration::from_secs;
        let (base, max) = (s(1), s(5));
        let mut b = Backoff::default();
        let mut t = Instant::now();
        let lengths: Vec<_> = (0..5).map(|_| b.next(t, base, max)).collect();
        assert_eq!(lengths, vec![s(1), s(2), s(4), s(5), s(5)]);
        b.back(t);
        t += s(5);
        assert_eq!(b.next(t, base, max), s(5), "back for exactly max: no reset");
        b.back(t);
        t += s(6);
        assert_eq!(
            b.next(t, base, max),
            s(1),
            "back for longer than max: starts over"
        );
        assert_eq!(b.count(), 1);
    }
}
