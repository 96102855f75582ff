//! One `RINGS` entry: the backend a new flow hashed there goes to, and the one it goes to
//! instead while that backend is not `BACKEND_ALIVE`.
//!
//! Why two: the writer stores in every entry, besides its backend, the backend the entry would
//! get if that one failed (and, for an entry whose base owner is down, that owner, which takes
//! the entry back when it returns). A single backend's failure or recovery is then visible to
//! the kernel with one `BACKENDS` write, its `ALIVE` bit, instead of rewriting the thousands of
//! entries it owns; the table is rewritten afterwards, off the decision's path, to prepare the
//! next change. Google's Maglev and Katran rewrite the table; this trades one more `BACKENDS`
//! lookup on a new flow to a dead backend (only then) for constant-time failover.
//!
//! Layout (`u32`): the low 16 bits are the primary (a backend id, or a marker); the high 16
//! bits are the alternative plus one, so 0 means "none" and an entry written as a plain backend
//! id (as every entry was before alternatives) keeps its backend. `NO_BACKEND` and `REJECT`
//! written whole decode as those markers, so an empty table needs no special form.

use crate::{MAX_BACKENDS, NO_BACKEND, REJECT};

/// `NO_BACKEND` in either half.
const DROP16: u32 = 0xFFFF;
/// `REJECT` in either half.
const REJECT16: u32 = 0xFFFE;

const fn half(id: u32) -> u32 {
    match id {
        NO_BACKEND => DROP16,
        REJECT => REJECT16,
        id => id & 0xFFFF,
    }
}

const fn whole(half: u32) -> u32 {
    match half {
        DROP16 => NO_BACKEND,
        REJECT16 => REJECT,
        id => id,
    }
}

/// An entry sending new flows to `primary` (a backend id, `NO_BACKEND` or `REJECT`), or to
/// `alternative` while `primary` is not alive. Ids must be below `MAX_BACKENDS`.
#[inline(always)]
pub const fn pack(primary: u32, alternative: Option<u32>) -> u32 {
    let high = match alternative {
        None => 0,
        Some(NO_BACKEND) => DROP16,
        Some(REJECT) => REJECT16,
        Some(id) => (id & 0xFFFF) + 1,
    };
    half(primary) | (high << 16)
}

/// The entry's primary: a backend id, `NO_BACKEND` or `REJECT`.
#[inline(always)]
pub const fn primary(entry: u32) -> u32 {
    whole(entry & 0xFFFF)
}

/// The entry's alternative, if it has one: a backend id, `NO_BACKEND` or `REJECT`.
#[inline(always)]
pub const fn alternative(entry: u32) -> Option<u32> {
    match entry >> 16 {
        0 => None,
        DROP16 => Some(NO_BACKEND),
        REJECT16 => Some(REJECT),
        plus_one => Some(plus_one - 1),
    }
}

/// What the kernel chooses for `entry` given which backends are alive: the primary while it is
/// alive (or a marker), else the alternative if there is one and it is alive (or a marker),
/// else the primary still (a stale entry the writer is about to replace).
pub fn choose(entry: u32, alive: impl Fn(u32) -> bool) -> u32 {
    let p = primary(entry);
    if p >= MAX_BACKENDS || alive(p) {
        return p;
    }
    match alternative(entry) {
        Some(a) if a >= MAX_BACKENDS || alive(a) => a,
        _ => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_plain_ids_and_markers_decode_as_before() {
        for p in [0, 1, 4095, NO_BACKEND, REJECT] {
            for a in [
                None,
                Some(0),
                Some(7),
                Some(4095),
                Some(NO_BACKEND),
                Some(REJECT),
            ] {
                let e = pack(p, a);
                assert_eq!((primary(e), alternative(e)), (p, a), "{p} {a:?}");
            }
        }
        // What earlier daemons wrote: a plain id, or a marker written whole.
        assert_eq!((primary(17), alternative(17)), (17, None));
        assert_eq!(primary(NO_BACKEND), NO_BACKEND);
        assert_eq!(primary(REJECT), REJECT);
    }

    #[test]
    fn the_alternative_serves_only_while_the_primary_is_down_and_itself_alive() {
        let e = pack(3, Some(5));
        assert_eq!(choose(e, |_| true), 3);
        assert_eq!(choose(e, |id| id != 3), 5);
        // Both down: the entry is stale; the primary stays until the writer replaces it.
        assert_eq!(choose(e, |_| false), 3);
        assert_eq!(choose(pack(3, Some(NO_BACKEND)), |_| false), NO_BACKEND);
        assert_eq!(choose(pack(3, Some(REJECT)), |_| false), REJECT);
        assert_eq!(choose(pack(3, None), |_| false), 3);
        assert_eq!(choose(pack(NO_BACKEND, Some(2)), |_| true), NO_BACKEND);
    }
}
