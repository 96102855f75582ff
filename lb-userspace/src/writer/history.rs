//! The last ten minutes of each backend: new flows per step and its health changes, which the
//! status page draws as a small inline SVG per backend. The writer samples every backend's
//! new-flow counter every [`STEP`] (it reads those counters for `/status` anyway) and records
//! every health change it applies; nothing here touches the data path.
//!
//! A backend is known by id and address: an id a reload gives to another address starts a new
//! history.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::status::{BackendHistory, HistoryChange};

/// One sample every 10 s; 60 of them are the ten minutes drawn.
pub const STEP: Duration = Duration::from_secs(10);
pub const WINDOW: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Series {
    address: String,
    /// (when, the backend's cumulative new-flow count), oldest first.
    samples: VecDeque<(Instant, u64)>,
    /// (when, up), oldest first.
    changes: VecDeque<(Instant, bool)>,
}

#[derive(Default)]
pub struct History {
    series: HashMap<u32, Series>,
}

impl History {
    fn series(&mut self, id: u32, address: &str) -> &mut Series {
        let s = self.series.entry(id).or_default();
        if s.address != address {
            *s = Series {
                address: address.to_string(),
                ..Series::default()
            };
        }
        s
    }

    /// Records each backend's cumulative new-flow count at `now`, and forgets what is older
    /// than the window (and backends no longer configured).
    pub fn sample<'a>(
        &mut self,
        now: Instant,
        backends: impl Iterator<Item = (u32, &'a str, u64)>,
    ) {
        let mut seen = Vec::new();
        for (id, address, new_flows) in backends {
            seen.push(id);
            let s = self.series(id, address);
            s.samples.push_back((now, new_flows));
            while s.samples.front().is_some_and(|(at, _)| now - *at > WINDOW) {
                s.samples.pop_front();
            }
            while s.changes.front().is_some_and(|(at, _)| now - *at > WINDOW) {
                s.changes.pop_front();
            }
        }
        self.series.retain(|id, _| seen.contains(id));
    }

    /// A health change the writer applied.
    pub fn change(&mut self, id: u32, address: &str, up: bool, now: Instant) {
        self.series(id, address).changes.push_back((now, up));
    }

    /// What the page draws for a backend whose cumulative count is `new_flows` now: new flows
    /// per step between samples, then the step in progress.
    pub fn view(&self, id: u32, address: &str, new_flows: u64, now: Instant) -> BackendHistory {
        let Some(s) = self.series.get(&id).filter(|s| s.address == address) else {
            return BackendHistory::default();
        };
        let mut points: Vec<(Instant, u64)> = s.samples.iter().copied().collect();
        points.push((now, new_flows));
        let steps = points
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .collect();
        BackendHistory {
            step_secs: STEP.as_secs() as u32,
            new_flows: steps,
            changes: s
                .changes
                .iter()
                .map(|(at, up)| HistoryChange {
                    secs_ago: now.saturating_duration_since(*at).as_secs() as u32,
                    up: *up,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_differences_and_the_window_slides() {
        let t0 = Instant::now();
        let mut h = History::default();
        let one = |n: u64| std::iter::once((7, "10.0.0.1:80", n));
        h.sample(t0, one(100));
        h.sample(t0 + STEP, one(130));
        h.change(7, "10.0.0.1:80", false, t0 + STEP + Duration::from_secs(1));
        let v = h.view(7, "10.0.0.1:80", 131, t0 + STEP * 2);
        assert_eq!(v.new_flows, [30, 1]);
        assert_eq!(
            v.changes,
            [HistoryChange {
                secs_ago: 9,
                up: false
            }]
        );
        // Eleven minutes of samples: ten minutes (and the one before) are kept.
        for i in 2..=66 {
            h.sample(t0 + STEP * i, one(130 + u64::from(i)));
        }
        let v = h.view(7, "10.0.0.1:80", 200, t0 + STEP * 66);
        assert_eq!(v.new_flows.len(), 61, "60 steps and the one in progress");
        assert!(v.changes.is_empty(), "the change left the window");
        // The id given to another address starts afresh; a backend gone is forgotten.
        assert_eq!(h.view(7, "10.0.0.2:80", 5, t0).new_flows, Vec::<u64>::new());
        h.sample(t0 + STEP * 67, std::iter::empty());
        assert!(h.view(7, "10.0.0.1:80", 0, t0).new_flows.is_empty());
    }
}
