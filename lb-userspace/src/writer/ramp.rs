//! Slow start for kernel-served services: a backend that comes back (or that a reload adds)
//! takes its Maglev entries back in batches over `slow_start`, instead of all at once.
//!
//! The table during a ramp is built from two derivations: `full`, with the ramping backends
//! active (where the ramp ends), and `without`, with them still out (where it starts). An entry
//! the two agree on never moves. Every other entry moves once, from its `without` owner to its
//! `full` owner, when the ramp's progress passes the entry's own place in a fixed order (a hash
//! of the entry's index): so at 30% of the ramp about 30% of the returning entries are back, and
//! an entry that went back never leaves again during the ramp. Progress is taken in steps of
//! 1/[`STEPS`], so a ramp costs [`STEPS`] table writes. Flows already in `FLOWS` keep their
//! backend throughout; only new flows follow the table.

use std::time::{Duration, Instant};

use super::state::MemberState;
use crate::{
    fallback::{Active, derive},
    plan::PlannedService,
};

/// Table writes per ramp.
pub const STEPS: u32 = 20;

/// Where in the ramp an entry returns, in [0, 1): a fixed spread of the entry indices.
fn place(slot: usize) -> f64 {
    // splitmix64's finaliser: neighbouring entries land far apart.
    let mut z = (slot as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The ramp's progress for one member, in whole steps: `None` when it is not ramping.
pub fn step(state: &MemberState, slow_start: Option<Duration>, now: Instant) -> Option<u32> {
    let (since, ramp) = state.up_since.zip(slow_start)?;
    let done = crate::l7::availability::ramp_done(since, ramp, now);
    (done < 1.0).then(|| (done * f64::from(STEPS)) as u32)
}

/// Every member's step (`None`: not ramping); empty when the service does not ramp in the
/// kernel (an HTTP service or pool ramps in the proxy instead).
pub fn steps(svc: &PlannedService, states: &[MemberState], now: Instant) -> Vec<Option<u32>> {
    if svc.serving.kernel().is_none() || svc.slow_start.is_none() {
        return Vec::new();
    }
    let steps: Vec<Option<u32>> = states
        .iter()
        .map(|s| step(s, svc.slow_start, now))
        .collect();
    if steps.iter().all(Option::is_none) {
        return Vec::new();
    }
    steps
}

/// The table to install for `active` when members ramp at `steps` (see [`steps`]).
pub fn table(svc: &PlannedService, active: &Active, steps: &[Option<u32>]) -> Vec<u32> {
    let full = derive(&svc.base, &svc.prefs, &svc.members, active);
    let Active::Members(set) = active else {
        return full;
    };
    let ramping = |m: usize| steps.get(m).copied().flatten();
    if !set
        .iter()
        .enumerate()
        .any(|(m, &a)| a && ramping(m).is_some())
    {
        return full;
    }
    let mut out_set = set.clone();
    for (m, a) in out_set.iter_mut().enumerate() {
        if ramping(m).is_some() {
            *a = false;
        }
    }
    // With every active member ramping, there is nothing to ramp from: take the target.
    if !out_set.iter().any(|&a| a) {
        return full;
    }
    let without = derive(
        &svc.base,
        &svc.prefs,
        &svc.members,
        &Active::Members(out_set),
    );
    // An entry whose target owner ramps follows that owner's progress; one that moves between
    // members that do not ramp (a reassignment the return changes) follows the slowest ramp.
    let slowest = (0..set.len()).filter_map(ramping).min().unwrap_or(STEPS);
    full.iter()
        .zip(&without)
        .enumerate()
        .map(|(slot, (&to, &from))| {
            if to == from {
                return to;
            }
            let step = usize::try_from(to)
                .ok()
                .and_then(ramping)
                .unwrap_or(slowest);
            if place(slot) < f64::from(step) / f64::from(STEPS) {
                to
            } else {
                from
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn service(backends: usize) -> PlannedService {
        let mut text = String::from(
            "[dataplane]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\n\
             vip = \"10.0.0.10:80\"\ntable_size = 1021\nslow_start = \"10s\"\n",
        );
        for i in 1..=backends {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"10.0.1.{i}:80\"\n"
            ));
        }
        let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        crate::plan::plan(&config).services.remove(0)
    }

    #[test]
    fn a_returning_backend_takes_its_entries_back_in_batches_and_nothing_else_moves() {
        let svc = service(4);
        let all = Active::Members(vec![true; 4]);
        let full = derive(&svc.base, &svc.prefs, &svc.members, &all);
        let without = derive(
            &svc.base,
            &svc.prefs,
            &svc.members,
            &Active::Members(vec![true, true, true, false]),
        );
        let returning: Vec<usize> = (0..full.len()).filter(|&s| full[s] != without[s]).collect();
        assert!(returning.len() > 200, "about a quarter of 1021 entries");
        let mut previous = without.clone();
        let mut shares = Vec::new();
        for step in 0..STEPS {
            let t = table(&svc, &all, &[None, None, None, Some(step)]);
            // Entries the two tables agree on never move.
            for s in 0..t.len() {
                if full[s] == without[s] {
                    assert_eq!(t[s], full[s], "entry {s} moved");
                }
                // A returned entry stays returned; any entry is either where it was or where
                // it ends.
                assert!(t[s] == without[s] || t[s] == full[s]);
                if previous[s] == full[s] && full[s] != without[s] {
                    assert_eq!(t[s], full[s], "entry {s} went back out at step {step}");
                }
            }
            let back = returning.iter().filter(|&&s| t[s] == full[s]).count();
            shares.push(back as f64 / returning.len() as f64);
            previous = t;
        }
        assert_eq!(shares[0], 0.0, "nothing returns at the start");
        for (i, share) in shares.iter().enumerate() {
            let expected = i as f64 / f64::from(STEPS);
            assert!(
                (share - expected).abs() < 0.1,
                "step {i}: {share:.2} of the entries back, expected about {expected:.2}"
            );
        }
        // Not ramping: the full table.
        assert_eq!(table(&svc, &all, &[None; 4]), full);
        assert_eq!(table(&svc, &all, &[]), full);
    }
}
