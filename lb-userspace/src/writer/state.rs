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
        }
    }
}

/// The health view fallback orders by: `healthy` per member.
pub fn health(states: &[MemberState]) -> Vec<bool> {
    states.iter().map(|s| s.healthy).collect()
}
