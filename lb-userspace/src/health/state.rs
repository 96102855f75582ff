//! The rise/fall state machine of one backend: `fall` consecutive failures take it down, `rise`
//! consecutive successes bring it up. A backend that must pass a first check starts down and is
//! admitted by its very first success (no need to wait `rise` probes at start-up), as HAProxy
//! does for a fresh server.

/// One backend's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    pub up: bool,
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
    /// Still waiting for the first probe result.
    fresh: bool,
}

impl HealthState {
    pub fn new(initially_up: bool, rise: u32, fall: u32) -> HealthState {
        HealthState {
            up: initially_up,
            rise: rise.max(1),
            fall: fall.max(1),
            successes: 0,
            failures: 0,
            fresh: true,
        }
    }

    /// Records a probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        let fresh = std::mem::replace(&mut self.fresh, false);
        if ok {
            self.failures = 0;
            self.successes += 1;
            if !self.up && (fresh || self.successes >= self.rise) {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.up && self.failures >= self.fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }

    /// Takes the backend down now (passive ejection); it comes back through `rise` successes.
    pub fn force_down(&mut self) -> bool {
        self.successes = 0;
        self.fresh = false;
        std::mem::replace(&mut self.up, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut HealthState, results: &str) -> String {
        results
            .chars()
            .map(|c| match s.observe(c == '+') {
                Some(true) => 'U',
                Some(false) => 'D',
                None => '.',
            })
            .collect()
    }

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        let mut s = HealthState::new(true, 2, 3);
        assert_eq!(run(&mut s, "+--+---"), "......D");
        assert!(!s.up);
        assert_eq!(run(&mut s, "+-++"), "...U");
        assert!(s.up);
    }

    #[test]
    fn a_fresh_backend_is_admitted_by_its_first_success() {
        let mut s = HealthState::new(false, 3, 2);
        assert_eq!(run(&mut s, "+"), "U");
        let mut s = HealthState::new(false, 3, 2);
        // A first failure gives up the shortcut: then `rise` it is.
        assert_eq!(run(&mut s, "-+++"), "...U");
    }

    #[test]
    fn rise_and_fall_of_one() {
        let mut s = HealthState::new(true, 1, 1);
        assert_eq!(run(&mut s, "-+-+"), "DUDU");
    }

    #[test]
    fn forced_down_needs_rise_successes() {
        let mut s = HealthState::new(true, 2, 3);
        assert!(s.force_down());
        assert!(!s.force_down(), "already down");
        assert_eq!(run(&mut s, "++"), ".U");
    }
}
