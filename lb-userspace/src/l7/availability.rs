//! The health view the proxy reads: for each HTTP service, its backends with tier, weight, and
//! whether the fallback ordering makes them active (taking first tries) or merely eligible
//! (healthy and not draining, so usable for retries). The map writer publishes it whenever it
//! changes the kernel's view, so L4 and L7 services follow one health engine and one ordering.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

/// One backend as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub address: SocketAddr,
    /// `address` as a URI authority, parsed once for every request's upstream URI.
    pub authority: hyper::http::uri::Authority,
    /// The backend's identity hash (as Maglev's), for rendezvous hashing by client.
    pub identity_hash: u64,
    pub tier: u32,
    pub weight: u32,
    /// In the active set: takes first tries.
    pub active: bool,
    /// Healthy and not draining: may take retries.
    pub eligible: bool,
    /// Slow start: came back at this instant and ramps to its full share over the duration.
    pub ramp: Option<(std::time::Instant, std::time::Duration)>,
}

/// One service's backends, with a smooth weighted round-robin wheel over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    pub members: Vec<MemberView>,
    /// The active members' indices in smooth weighted round-robin order (nginx's algorithm):
    /// each appears `weight` times, spread out. Recomputed when the view changes.
    pub wheel: Vec<u16>,
    /// Whether some member is in its slow start.
    pub ramping: bool,
}

impl MemberView {
    pub fn new(address: SocketAddr, tier: u32, weight: u32, active: bool, eligible: bool) -> Self {
        let identity = address.to_string();
        MemberView {
            address,
            identity_hash: crate::maglev::identity_hash(&identity),
            authority: identity.parse().expect("a socket address is an authority"),
            tier,
            weight,
            active,
            eligible,
            ramp: None,
        }
    }

    /// With a slow start `(came back at, ramp)`, if one is configured and still running.
    pub fn ramping(
        mut self,
        slow_start: Option<(std::time::Instant, std::time::Duration)>,
    ) -> MemberView {
        let now = std::time::Instant::now();
        self.ramp = slow_start.filter(|&(since, d)| ramp_done(since, d, now) < 1.0);
        self
    }

    /// The share of its weight it takes now: 1 when not ramping; from 0 to 1 over the ramp.
    pub fn ramp_share(&self, now: std::time::Instant) -> f64 {
        self.ramp
            .map_or(1.0, |(since, d)| ramp_done(since, d, now).min(1.0))
    }
}

/// How far a slow start that began at `since` and lasts `ramp` has gone at `now`: 0 at its
/// start, 1 or more once over.
pub fn ramp_done(
    since: std::time::Instant,
    ramp: std::time::Duration,
    now: std::time::Instant,
) -> f64 {
    now.saturating_duration_since(since).as_secs_f64() / ramp.as_secs_f64().max(1e-9)
}

impl PoolView {
    pub fn new(members: Vec<MemberView>) -> PoolView {
        let weights: Vec<u32> = members
            .iter()
            .map(|m| if m.active { m.weight } else { 0 })
            .collect();
        let wheel = smooth_wheel(&weights);
        let ramping = members.iter().any(|m| m.ramp.is_some());
        PoolView {
            members,
            wheel,
            ramping,
        }
    }
}

/// Smooth weighted round robin: at each step every member gains its weight, the richest is
/// picked and pays the total. Weights are scaled down so the wheel stays at most 4096 long;
/// weight 0 leaves a member out.
pub fn smooth_wheel(weights: &[u32]) -> Vec<u16> {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    let scale = total.div_ceil(4096).max(1);
    let w: Vec<i64> = weights
        .iter()
        .map(|&x| {
            if x == 0 {
                0
            } else {
                (x as u64 / scale).max(1) as i64
            }
        })
        .collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut wheel = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        wheel.push(best as u16);
    }
    wheel
}

/// Service name to its pool view; replaced entry by entry by the writer.
pub type Availability = Arc<RwLock<HashMap<String, Arc<PoolView>>>>;

pub fn new_availability() -> Availability {
    Arc::new(RwLock::new(HashMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wheel_honours_weights_and_interleaves() {
        let wheel = smooth_wheel(&[5, 1, 1]);
        assert_eq!(wheel.len(), 7);
        assert_eq!(wheel.iter().filter(|&&m| m == 0).count(), 5);
        // nginx's documented sequence for 5/1/1: a a b a c a a.
        assert_eq!(wheel, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wheel(&[1, 0, 1]), vec![0, 2]);
        assert!(smooth_wheel(&[0, 0]).is_empty());
        let big = smooth_wheel(&[1000; 10]);
        assert!(big.len() <= 4096 && big.len() >= 10);
    }
}
