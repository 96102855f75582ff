//! The retry budget: retries may be at most `ratio` of the requests seen in the last ten
//! seconds, plus `min_per_second` for each of those seconds (Linkerd's and Finagle's budget),
//! so a failing pool cannot multiply its own load.

use std::{sync::Mutex, time::Instant};

const WINDOW_SECONDS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    origin: Instant,
    buckets: Mutex<[Bucket; WINDOW_SECONDS]>,
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Budget {
        Budget {
            ratio,
            min_per_second,
            origin: Instant::now(),
            buckets: Mutex::new([Bucket::default(); WINDOW_SECONDS]),
        }
    }

    fn with_bucket<T>(&self, now: Instant, f: impl FnOnce(&mut [Bucket], usize) -> T) -> T {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let i = (second % WINDOW_SECONDS as u64) as usize;
        if b[i].second != second {
            b[i] = Bucket {
                second,
                ..Bucket::default()
            };
        }
        for x in b.iter_mut() {
            if second.saturating_sub(x.second) >= WINDOW_SECONDS as u64 {
                *x = Bucket {
                    second: x.second,
                    ..Bucket::default()
                };
            }
        }
        f(&mut b[..], i)
    }

    /// Counts a request.
    pub fn request(&self, now: Instant) {
        self.with_bucket(now, |b, i| b[i].requests += 1);
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_retry(&self, now: Instant) -> bool {
        self.with_bucket(now, |b, i| {
            let requests: u64 = b.iter().map(|x| x.requests).sum();
            let retries: u64 = b.iter().map(|x| x.retries).sum();
            let allowed =
                self.min_per_second as f64 * WINDOW_SECONDS as f64 + self.ratio * requests as f64;
            if (retries + 1) as f64 <= allowed {
                b[i].retries += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_are_capped_at_the_ratio_plus_the_reserve() {
        let b = Budget::new(0.2, 3);
        let t = Instant::now() + Duration::from_millis(10);
        let mut granted = 0;
        for _ in 0..1000 {
            b.request(t);
            if b.try_retry(t) {
                granted += 1;
            }
        }
        // 30 reserved (3/s over 10 s) + 20% of 1000.
        assert_eq!(granted, 230);
    }

    #[test]
    fn the_window_slides() {
        let b = Budget::new(0.0, 1);
        let t = Instant::now() + Duration::from_millis(10);
        let granted = (0..20).filter(|_| b.try_retry(t)).count();
        assert_eq!(granted, 10);
        assert!(!b.try_retry(t + Duration::from_secs(5)));
        assert!(
            b.try_retry(t + Duration::from_secs(11)),
            "old retries expire"
        );
    }
}
