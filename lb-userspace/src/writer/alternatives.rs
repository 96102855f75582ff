//! The kernel's entries for a service's table: each entry's backend and its alternative (see
//! `lb_common::ring_entry`), chosen so that one backend's failure or recovery is visible to the
//! kernel with its `ALIVE` bit alone.
//!
//! - An entry served by an active member `m` gets, as its alternative, what the entry would hold
//!   if `m` failed: the full derivation (tiers, `min_healthy`, `on_all_down`) for the health view
//!   with `m` down. So when `m`'s `ALIVE` bit goes, each of its entries is already where the new
//!   table puts it.
//! - An entry whose base owner is down (and not drained) names that owner first and the entry's
//!   current backend as the alternative: when the owner's `ALIVE` bit returns, it takes its entries
//!   back at once, as the new table does. Not for kernel services with `slow_start`, whose
//!   returning backends take their entries back in steps instead.
//!
//! What two values per entry cannot say: an entry whose owner is down and whose current backend
//! then fails too has no live choice until the writer replaces the table (the kernel keeps the
//! entry's first backend meanwhile, as the table before did). The writer checks, after each
//! change's bits, whether the bits alone gave the new table, and only counts a decision visible
//! once the kernel's choice matches.

use lb_common::{MAX_BACKENDS, ring_entry};

use crate::{
    fallback::{Active, active_set, derive_slot, tier_activity},
    plan::PlannedService,
};

/// Entries for `table` (member indices or markers, derived for `health`), with alternatives;
/// `ramping`: the table is a slow-start step, for which only the primaries are written.
pub fn entries(svc: &PlannedService, health: &[bool], table: &[u32], ramping: bool) -> Vec<u32> {
    let id = |m: u32| svc.backend_id(m);
    let mut out: Vec<u32> = table
        .iter()
        .map(|&m| ring_entry::pack(id(m), None))
        .collect();
    if ramping {
        return out;
    }
    let n = svc.members.len();
    // Entries by the member serving them.
    let mut served: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (slot, &m) in table.iter().enumerate() {
        if let Some(s) = served.get_mut(m as usize) {
            s.push(slot as u32);
        }
    }
    // Returning owners first: their entries name them, then the entry's current backend.
    let mut returning = vec![false; table.len()];
    if svc.slow_start.is_none() {
        for (slot, (&owner, &now)) in svc.base.iter().zip(table).enumerate() {
            let o = owner as usize;
            if owner != now && !health[o] && !svc.members[o].rank.drain {
                out[slot] = ring_entry::pack(id(owner), Some(id(now)));
                returning[slot] = true;
            }
        }
    }
    // Then each serving member's entries: where they go if it fails. Every eligible member of a
    // tier fails into the same set but for itself, so the set is derived once per tier (for its
    // first such member) and adjusted for the others.
    let mut tiers: Vec<u32> = svc.members.iter().map(|m| m.rank.tier).collect();
    tiers.sort_unstable();
    tiers.dedup();
    for tier in tiers {
        let failing: Vec<usize> = (0..n)
            .filter(|&m| svc.members[m].rank.tier == tier && health[m] && !served[m].is_empty())
            .collect();
        let Some(&first) = failing.first() else {
            continue;
        };
        let mut down = health.to_vec();
        down[first] = false;
        let after = active_set(&svc.members, &down, svc.min_healthy, svc.on_all_down);
        let Active::Members(mut set) = after else {
            // Nobody left: every entry of this (only) serving member gets the marker.
            let marker = if after == Active::Reject {
                lb_common::REJECT
            } else {
                lb_common::NO_BACKEND
            };
            for &m in &failing {
                for &slot in served[m].iter().filter(|&&s| !returning[s as usize]) {
                    out[slot as usize] = ring_entry::pack(id(m as u32), Some(marker));
                }
            }
            continue;
        };
        let tier_active = tier_activity(&svc.prefs, &svc.members, &set);
        // Whether this tier's eligible members stay in the set when one of them fails: all of
        // them alike, so the second one says (with one alone, nobody else needs to be put back).
        let kept = failing.get(1).is_some_and(|&m| set[m]);
        for &m in &failing {
            // `set` is the set for `first` failing; make it the one for `m` failing.
            set[first] = m != first && kept;
            set[m] = false;
            for &slot in served[m].iter().filter(|&&s| !returning[s as usize]) {
                let slot = slot as usize;
                let to = derive_slot(
                    slot,
                    &svc.base,
                    &svc.prefs,
                    &svc.members,
                    &set,
                    &tier_active,
                );
                out[slot] = ring_entry::pack(id(m as u32), Some(id(to)));
            }
            set[m] = m != first && kept;
        }
    }
    debug_assert!(svc.members.iter().all(|m| m.id < MAX_BACKENDS));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn service(tiers: &[u32], weights: &[u32]) -> PlannedService {
        let mut text = String::from(
            "[dataplane]\ninterfaces = [\"lo\"]\n[[service]]\nname = \"s\"\nvip = \"10.0.0.10:80\"\ntable_size = 1009\n",
        );
        for (i, (t, w)) in tiers.iter().zip(weights).enumerate() {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"10.0.1.{}:80\"\ntier = {t}\nweight = {w}\n",
                i + 1
            ));
        }
        let config = Config::parse("t.toml".as_ref(), &text).unwrap();
        crate::plan::plan(&config).services.remove(0)
    }

    /// What the kernel chooses in every entry once the `ALIVE` bits say `health`.
    fn chosen(svc: &PlannedService, entries: &[u32], health: &[bool]) -> Vec<u32> {
        let alive = |id: u32| {
            svc.members
                .iter()
                .position(|m| m.id == id)
                .is_some_and(|mi| svc.alive(health, mi))
        };
        entries
            .iter()
            .map(|&e| ring_entry::choose(e, alive))
            .collect()
    }

    /// From every backend up, any one failing; from one down, its return: the bits alone give
    /// the new table, in every entry, whatever the tiers and weights.
    #[test]
    fn one_failure_or_one_return_needs_only_the_bits() {
        let mut rng = fastrand::Rng::with_seed(5);
        for round in 0..40 {
            let n = rng.usize(2..7);
            let tiers: Vec<u32> = (0..n).map(|_| rng.u32(0..3)).collect();
            let weights: Vec<u32> = (0..n).map(|_| rng.u32(1..4)).collect();
            let svc = service(&tiers, &weights);
            let all = vec![true; n];
            let up_entries = entries(&svc, &all, &svc.member_table(&all), false);
            for m in 0..n {
                let mut down = all.clone();
                down[m] = false;
                let why = format!("round {round}: tiers {tiers:?} weights {weights:?}, member {m}");
                assert_eq!(
                    chosen(&svc, &up_entries, &down),
                    svc.table_for(&down),
                    "{why} failing"
                );
                let down_entries = entries(&svc, &down, &svc.member_table(&down), false);
                assert_eq!(
                    chosen(&svc, &down_entries, &all),
                    svc.table_for(&all),
                    "{why} returning"
                );
                // With the bits unchanged, the entries are the table itself.
                assert_eq!(chosen(&svc, &down_entries, &down), svc.table_for(&down));
            }
        }
    }

    #[test]
    fn a_slow_starting_service_gets_no_returning_owners() {
        let mut svc = service(&[0, 0, 0], &[1, 1, 1]);
        svc.slow_start = Some(std::time::Duration::from_secs(10));
        let down = [false, true, true];
        let e = entries(&svc, &down, &svc.member_table(&down), false);
        assert!(
            e.iter()
                .all(|&e| ring_entry::primary(e) != svc.members[0].id)
        );
        // The failures of the others are still prepared.
        assert!(e.iter().all(|&e| ring_entry::alternative(e).is_some()));
    }
}
