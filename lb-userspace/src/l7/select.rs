//! The order in which a request tries backends. The first try goes to an active backend, chosen
//! by weighted round robin, or by weighted rendezvous hashing on the client address when the
//! service hashes by source IP. Retries walk the rest of the fallback order: the other active
//! backends by tier, then the eligible backends of the tiers the ordering did not need, by tier.
//! Within a tier, retries rotate with the request counter (or follow the hash ranking), so they
//! spread over the pool instead of piling onto one backend.

use super::availability::PoolView;
use crate::rendezvous;

/// What the first choice is drawn from.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    /// The service's request counter: round robin.
    RoundRobin(u64),
    /// A hash of the client address: affinity.
    Hash(u64),
}

/// Member indices, best first: every eligible backend exactly once.
pub fn order(pool: &PoolView, key: Key) -> Vec<usize> {
    let n = pool.members.len();
    let eligible = |i: usize| pool.members[i].eligible || pool.members[i].active;
    // The first try, then every other candidate in preference order (ignoring tiers).
    let (first, ranked): (Option<usize>, Vec<usize>) = match key {
        Key::RoundRobin(counter) => {
            let first = (!pool.wheel.is_empty())
                .then(|| pool.wheel[(counter % pool.wheel.len() as u64) as usize] as usize);
            // The others rotate with the counter, so retries spread too.
            let start = (counter % n.max(1) as u64) as usize;
            let ranked = (0..n)
                .map(|k| (start + k) % n)
                .filter(|&i| eligible(i))
                .collect();
            (first, ranked)
        }
        Key::Hash(h) => {
            let mut scored: Vec<(f64, usize)> = (0..n)
                .filter(|&i| eligible(i))
                .map(|i| {
                    let m = &pool.members[i];
                    (rendezvous::score(m.identity_hash, m.weight, h, true), i)
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            let ranked: Vec<usize> = scored.into_iter().map(|(_, i)| i).collect();
            (
                ranked.iter().copied().find(|&i| pool.members[i].active),
                ranked,
            )
        }
    };
    let Some(first) = first else {
        // Nothing active: the ordering has nobody for first tries (all down, drop or reject).
        return Vec::new();
    };
    let mut rest: Vec<usize> = ranked.into_iter().filter(|&i| i != first).collect();
    // Stable: within a class and tier the preference order stays.
    rest.sort_by_key(|&i| (!pool.members[i].active, pool.members[i].tier));
    let mut out = vec![first];
    out.extend(rest);
    out
}

/// The candidates of one request, best first, as [`order`] ranks them. With round robin the first
/// comes straight off the wheel; the rest is ranked only if a retry asks for it, so a request that
/// succeeds at once allocates nothing here.
pub struct Candidates<'a> {
    pool: &'a PoolView,
    key: Key,
    given: usize,
    rest: Option<std::vec::IntoIter<usize>>,
}

impl<'a> Candidates<'a> {
    pub fn new(pool: &'a PoolView, key: Key) -> Candidates<'a> {
        Candidates {
            pool,
            key,
            given: 0,
            rest: None,
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        self.given += 1;
        if self.given == 1
            && let Key::RoundRobin(counter) = self.key
        {
            let wheel = &self.pool.wheel;
            if wheel.is_empty() {
                return None;
            }
            let at = |c: u64| wheel[(c % wheel.len() as u64) as usize] as usize;
            if self.pool.ramping {
                // Slow start: a ramping backend keeps the pick with the probability of its
                // share so far, else the next places on the wheel are looked at (at most 8), so
                // it takes about that share of its weight's first tries.
                let now = std::time::Instant::now();
                for k in 0..8 {
                    let i = at(counter.wrapping_add(k));
                    let m = &self.pool.members[i];
                    if m.ramp.is_none() || fastrand::f64() < m.ramp_share(now) {
                        return Some(i);
                    }
                }
            }
            return Some(at(counter));
        }
        let skip = if self.rest.is_none() {
            self.given - 1
        } else {
            0
        };
        let rest = self
            .rest
            .get_or_insert_with(|| order(self.pool, self.key).into_iter());
        rest.nth(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::availability::MemberView;

    fn pool(spec: &[(u32, u32, bool, bool)]) -> PoolView {
        PoolView::new(
            spec.iter()
                .enumerate()
                .map(|(i, &(tier, weight, active, eligible))| {
                    let address = format!("10.0.0.{}:80", i + 1).parse().unwrap();
                    MemberView::new(address, tier, weight, active, eligible)
                })
                .collect(),
        )
    }

    #[test]
    fn round_robin_spreads_first_tries_by_weight() {
        let p = pool(&[(0, 2, true, true), (0, 1, true, true), (1, 1, false, true)]);
        let mut counts = [0; 3];
        for c in 0..300 {
            counts[order(&p, Key::RoundRobin(c))[0]] += 1;
        }
        assert_eq!(counts, [200, 100, 0]);
    }

    #[test]
    fn retries_follow_tiers_and_never_repeat() {
        // Member 1 (tier 0) is down; member 2 (tier 1) is active because tier 0 fell short.
        let p = pool(&[
            (0, 1, true, true),
            (0, 1, false, false),
            (1, 1, true, true),
            (2, 1, false, true),
            (1, 1, false, true),
        ]);
        for c in 0..10 {
            let o = order(&p, Key::RoundRobin(c));
            assert!(
                o[0] == 0 || o[0] == 2,
                "first try on an active backend: {o:?}"
            );
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                vec![0, 2, 3, 4],
                "each eligible backend once: {o:?}"
            );
            // After the active ones: tier 1 before tier 2.
            assert_eq!(&o[2..], &[4, 3]);
        }
    }

    #[test]
    fn hashing_keeps_a_client_on_one_backend() {
        let p = pool(&[(0, 1, true, true), (0, 1, true, true), (0, 1, true, true)]);
        let a = order(&p, Key::Hash(42));
        assert_eq!(a, order(&p, Key::Hash(42)));
        let firsts: std::collections::HashSet<usize> = (0..100)
            .map(|h| order(&p, Key::Hash(h * 7919))[0])
            .collect();
        assert_eq!(firsts.len(), 3, "different clients spread");
    }

    #[test]
    fn candidates_follow_the_order_lazily() {
        let p = pool(&[
            (0, 2, true, true),
            (0, 1, true, true),
            (1, 1, false, true),
            (0, 1, false, false),
        ]);
        for c in 0..12 {
            for key in [Key::RoundRobin(c), Key::Hash(c * 7919)] {
                let lazy: Vec<usize> = Candidates::new(&p, key).collect();
                assert_eq!(lazy, order(&p, key), "{key:?}");
            }
        }
        let none = pool(&[(0, 1, false, false)]);
        assert_eq!(Candidates::new(&none, Key::RoundRobin(3)).next(), None);
    }

    #[test]
    fn nothing_active_means_no_order() {
        let p = pool(&[(0, 1, false, false), (1, 1, false, false)]);
        assert!(order(&p, Key::RoundRobin(0)).is_empty());
    }
}
