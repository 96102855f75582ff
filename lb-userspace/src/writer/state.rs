//! What the writer knows of each backend: one [`MemberState`] per member of every service, kept
//! in the plan's order, instead of parallel vectors that a reload must keep in step.

/// One backend's state as the writer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// The health tasks' (or the operator's adopted) verdict.
    pub healthy: bool,
    /// Whether its `BACKENDS` entry carries `ALIVE`, so established flows may stay on it.
    pub alive: bool,
    /// The last health change applied to it.
    pub last: Option<Change>,
    /// When it last came back up (not set for backends up from the start): its slow start
    /// runs from here.
    pub up_since: Option<std::time::Instant>,
    /// Whether its next rise starts a slow start: after it has been up and went down, and for
    /// a backend a reload added. Not at the daemon's start, where every backend is new.
    pub ramps: bool,
}

/// A health change, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub reason: String,
    /// Unix time, seconds.
    pub at: u64,
}

impl MemberState {
    /// A backend nobody has checked yet: alive exactly when it starts healthy.
    pub fn new(healthy: bool) -> MemberState {
        MemberState {
            healthy,
            alive: healthy,
            last: None,
            up_since: None,
            ramps: healthy,
        }
    }

    /// A backend a reload added: its first rise ramps too.
    pub fn added(healthy: bool) -> MemberState {
        MemberState {
            ramps: true,
            up_since: healthy.then(std::time::Instant::now),
            ..MemberState::new(healthy)
        }
    }

    /// Applies a health verdict; returns whether it changed.
    pub fn set_healthy(&mut self, up: bool) -> bool {
        if self.healthy == up {
            return false;
        }
        self.healthy = up;
        self.up_since = (up && self.ramps).then(std::time::Instant::now);
        if up {
            self.ramps = true;
        }
        true
    }
}

/// The health view fallback orders by: `healthy` per member.
pub fn health(states: &[MemberState]) -> Vec<bool> {
    states.iter().map(|s| s.healthy).collect()
}
