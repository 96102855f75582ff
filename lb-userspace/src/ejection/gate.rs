//! The cap on one service's passive ejections, shared by that service's backend tasks. Each task
//! tells the gate where its backend stands; a task asks before it ejects on passive evidence.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use super::{max_ejected, may_eject};

/// Where one backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Passing its active checks (or unchecked) and not ejected.
    Up,
    /// Down by its active checks.
    Down,
    /// Out on passive evidence.
    Ejected,
}

/// Why an ejection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub ejected: usize,
    pub cap: usize,
    pub up: usize,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.up <= 1 {
            write!(f, "it is the service's last backend in service")
        } else {
            write!(
                f,
                "{} of the service's backends are already ejected (max_ejection_percent allows {})",
                self.ejected, self.cap
            )
        }
    }
}

/// One service's gate.
#[derive(Debug, Default)]
pub struct Gate {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    percent: u32,
    members: HashMap<u32, Standing>,
}

impl Gate {
    pub fn new(percent: u32) -> Arc<Gate> {
        let g = Gate::default();
        g.lock().percent = percent;
        Arc::new(g)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a reload: the service's backends are `ids` and its share `percent`. Backends that
    /// stay keep their standing; new ones count as down until their task says otherwise.
    pub fn configure(&self, percent: u32, ids: &[u32]) {
        let mut s = self.lock();
        s.percent = percent;
        s.members.retain(|id, _| ids.contains(id));
        for id in ids {
            s.members.entry(*id).or_insert(Standing::Down);
        }
    }

    pub fn set(&self, id: u32, standing: Standing) {
        self.lock().members.insert(id, standing);
    }

    /// Ejects backend `id` if the cap allows it.
    pub fn try_eject(&self, id: u32) -> Result<(), Refused> {
        let mut s = self.lock();
        let ejected = s
            .members
            .values()
            .filter(|m| **m == Standing::Ejected)
            .count();
        let up = s.members.values().filter(|m| **m == Standing::Up).count();
        if !may_eject(s.members.len(), ejected, up, s.percent) {
            let cap = max_ejected(s.members.len(), s.percent);
            return Err(Refused { ejected, cap, up });
        }
        s.members.insert(id, Standing::Ejected);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_evidence_never_takes_the_last_backends() {
        let g = Gate::new(10);
        g.configure(10, &[0, 1, 2]);
        for id in 0..3 {
            g.set(id, Standing::Up);
        }
        assert!(g.try_eject(0).is_ok(), "one of three may go");
        let r = g.try_eject(1).unwrap_err();
        assert_eq!((r.ejected, r.cap), (1, 1), "10% of three is one");
        g.set(0, Standing::Up);
        g.set(1, Standing::Down);
        assert!(g.try_eject(2).is_ok(), "0 stays in service");
        g.set(2, Standing::Up);
        g.set(0, Standing::Down);
        let r = g.try_eject(2).unwrap_err();
        assert_eq!(r.up, 1, "the last one in service stays");
        assert!(r.to_string().contains("last backend"), "{r}");
    }

    #[test]
    fn a_reload_keeps_standings_and_counts_new_backends_as_down() {
        let g = Gate::new(50);
        g.configure(50, &[0, 1]);
        g.set(0, Standing::Up);
        g.set(1, Standing::Up);
        g.configure(50, &[0, 1, 2, 3]);
        g.set(2, Standing::Up);
        assert!(g.try_eject(0).is_ok());
        assert!(g.try_eject(1).is_ok(), "half of four, two up before");
        assert!(g.try_eject(2).is_err());
    }
}
