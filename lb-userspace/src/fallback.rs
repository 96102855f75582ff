//! Fallback ordering: which backends take new flows given their health, and the table that sends
//! flows to them.
//!
//! **Tiers.** Backends sit in priority tiers (0 is primary). Walking the tiers upwards, each
//! tier's healthy, non-draining backends join the active set, and the walk stops at the first tier
//! that meets `min_healthy` on its own. If no tier does, every healthy backend is active. If none is
//! healthy, `on_all_down` decides: drop, reject, or fail open (all non-draining backends).
//!
//! **Tables.** The base table is the Maglev table of the primary (lowest) tier with every backend
//! present. The active table keeps each base entry whose backend is active, and gives every other
//! entry to the active backend that ranks first for that entry under weighted rendezvous hashing
//! on (entry, backend identity). So a failure moves exactly the failed backend's entries, its
//! recovery moves exactly them back, flows on healthy backends keep their backend even without
//! `FLOWS` state (which keeps ECMP'd balancers consistent), and the same config and health view
//! give the same table on every node.

use lb_common::{NO_BACKEND, REJECT};

use crate::{
    config::{MinHealthy, OnAllDown},
    rendezvous,
};

/// One backend of a service, as fallback sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Hash of the backend's identity ("IP:port"), fixed across nodes.
    pub identity_hash: u64,
    pub weight: u32,
    pub tier: u32,
    pub drain: bool,
}

impl AsRef<Member> for Member {
    fn as_ref(&self) -> &Member {
        self
    }
}

/// Who takes new flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Active {
    /// These members (by index), at least one.
    Members(Vec<bool>),
    /// Nobody: drop new flows.
    Drop,
    /// Nobody: reject new flows.
    Reject,
}

/// The active set for the given health (`healthy[i]` for member `i`).
pub fn active_set(
    members: &[impl AsRef<Member>],
    healthy: &[bool],
    min_healthy: MinHealthy,
    on_all_down: OnAllDown,
) -> Active {
    let mut tiers: Vec<u32> = members.iter().map(|m| m.as_ref().tier).collect();
    tiers.sort_unstable();
    tiers.dedup();
    let eligible = |i: usize| healthy[i] && !members[i].as_ref().drain;
    let mut set = vec![false; members.len()];
    for tier in tiers {
        let in_tier: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].as_ref().tier == tier)
            .collect();
        let up = in_tier.iter().filter(|&&i| eligible(i)).count();
        for &i in &in_tier {
            set[i] = eligible(i);
        }
        if min_healthy.met(up, in_tier.len()) {
            return Active::Members(set);
        }
    }
    if set.iter().any(|&a| a) {
        return Active::Members(set);
    }
    match on_all_down {
        OnAllDown::Drop => Active::Drop,
        OnAllDown::Reject => Active::Reject,
        OnAllDown::FailOpen => {
            let all: Vec<bool> = members.iter().map(|m| !m.as_ref().drain).collect();
            if all.iter().any(|&a| a) {
                Active::Members(all)
            } else {
                Active::Drop
            }
        }
    }
}

/// Rendezvous rank of member `m` for table entry `slot`.
fn rank(m: &Member, slot: u64, weighted: bool) -> f64 {
    rendezvous::score(m.identity_hash, m.weight, slot, weighted)
}

/// No member: a tier with nobody but the entry's base owner.
const NONE: u16 = u16::MAX;

/// For every table entry and every tier, the member of that tier (other than the entry's base
/// owner) that ranks first for the entry. Computed once per config, it lets a reassigned entry be
/// settled with a lookup instead of ranking every candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Preferences {
    tiers: Vec<(u32, Vec<u16>)>,
    weighted: bool,
}

impl Preferences {
    pub fn new(base: &[u32], members: &[impl AsRef<Member>]) -> Preferences {
        let weighted = members
            .windows(2)
            .any(|w| w[0].as_ref().weight != w[1].as_ref().weight);
        let mut tiers: Vec<u32> = members.iter().map(|m| m.as_ref().tier).collect();
        tiers.sort_unstable();
        tiers.dedup();
        let tiers = tiers
            .into_iter()
            .map(|t| {
                let in_tier: Vec<usize> = (0..members.len())
                    .filter(|&i| members[i].as_ref().tier == t)
                    .collect();
                let best = base
                    .iter()
                    .enumerate()
                    .map(|(slot, &owner)| {
                        top(
                            in_tier.iter().copied().filter(|&c| c != owner as usize),
                            members,
                            slot,
                            weighted,
                        )
                        .map_or(NONE, |c| c as u16)
                    })
                    .collect();
                (t, best)
            })
            .collect();
        Preferences { tiers, weighted }
    }
}

/// The candidate ranking first for `slot`.
fn top(
    candidates: impl Iterator<Item = usize>,
    members: &[impl AsRef<Member>],
    slot: usize,
    weighted: bool,
) -> Option<usize> {
    let mut best = None;
    let mut best_rank = f64::MIN;
    for c in candidates {
        let r = rank(members[c].as_ref(), slot as u64, weighted);
        if r > best_rank {
            best_rank = r;
            best = Some(c);
        }
    }
    best
}

/// One entry of the active table for the active set `set` (`tier_active[t]`: whether tier
/// index `t` of `prefs` has an active member).
pub fn derive_slot(
    slot: usize,
    base: &[u32],
    prefs: &Preferences,
    members: &[impl AsRef<Member>],
    set: &[bool],
    tier_active: &[bool],
) -> u32 {
    let owner = base[slot];
    if set[owner as usize] {
        return owner;
    }
    // The first-ranked active member is the best of each tier's first-ranked member, as long as
    // that member is active wherever its tier has active members.
    let single = tier_active.iter().filter(|&&a| a).count() == 1;
    let mut best = None;
    let mut best_rank = f64::MIN;
    for ((_, firsts), &active) in prefs.tiers.iter().zip(tier_active) {
        if !active {
            continue;
        }
        let c = firsts[slot];
        if c == NONE || !set[c as usize] {
            let all = (0..members.len()).filter(|&i| set[i]);
            return top(all, members, slot, prefs.weighted).map_or(NO_BACKEND, |c| c as u32);
        }
        if single {
            return c as u32;
        }
        let r = rank(members[c as usize].as_ref(), slot as u64, prefs.weighted);
        if r > best_rank {
            best_rank = r;
            best = Some(c as u32);
        }
    }
    best.unwrap_or(NO_BACKEND)
}

/// Which tiers of `prefs` have an active member.
pub fn tier_activity(
    prefs: &Preferences,
    members: &[impl AsRef<Member>],
    set: &[bool],
) -> Vec<bool> {
    prefs
        .tiers
        .iter()
        .map(|(t, _)| (0..members.len()).any(|i| set[i] && members[i].as_ref().tier == *t))
        .collect()
}

/// The active table: `base` holds member indices; the result holds member indices, or
/// [`NO_BACKEND`]/[`REJECT`] in every entry when nobody is active.
pub fn derive(
    base: &[u32],
    prefs: &Preferences,
    members: &[impl AsRef<Member>],
    active: &Active,
) -> Vec<u32> {
    let set = match active {
        Active::Drop => return vec![NO_BACKEND; base.len()],
        Active::Reject => return vec![REJECT; base.len()],
        Active::Members(set) => set,
    };
    let tier_active = tier_activity(prefs, members, set);
    (0..base.len())
        .map(|slot| derive_slot(slot, base, prefs, members, set, &tier_active))
        .collect()
}

/// The reference derivation: every reassigned entry ranks every active member. [`derive`] must
/// give the same table; the tests hold it to that.
pub fn derive_reference(base: &[u32], members: &[impl AsRef<Member>], active: &Active) -> Vec<u32> {
    let set = match active {
        Active::Drop => return vec![NO_BACKEND; base.len()],
        Active::Reject => return vec![REJECT; base.len()],
        Active::Members(set) => set,
    };
    let weighted = members
        .windows(2)
        .any(|w| w[0].as_ref().weight != w[1].as_ref().weight);
    base.iter()
        .enumerate()
        .map(|(slot, &b)| {
            if set[b as usize] {
                return b;
            }
            let all = (0..members.len()).filter(|&i| set[i]);
            top(all, members, slot, weighted).map_or(NO_BACKEND, |c| c as u32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(tiers: &[u32]) -> Vec<Member> {
        tiers
            .iter()
            .enumerate()
            .map(|(i, &tier)| Member {
                identity_hash: crate::rendezvous::mix(i as u64 + 1),
                weight: 1,
                tier,
                drain: false,
            })
            .collect()
    }

    /// 3 tiers of 2 backends: every one of the 64 health combinations, with min_healthy 1 and 2.
    #[test]
    fn tier_selection_for_every_health_combination() {
        let m = members(&[0, 0, 1, 1, 2, 2]);
        for min in [
            MinHealthy::Count(1),
            MinHealthy::Count(2),
            MinHealthy::Ratio(1.0),
        ] {
            for bits in 0u32..64 {
                let healthy: Vec<bool> = (0..6).map(|i| bits & (1 << i) != 0).collect();
                let up_in = |t: usize| healthy[2 * t] as usize + healthy[2 * t + 1] as usize;
                let got = active_set(&m, &healthy, min, OnAllDown::Drop);
                if bits == 0 {
                    assert_eq!(got, Active::Drop);
                    continue;
                }
                let Active::Members(set) = got else {
                    panic!("{bits:06b}: nobody active although some are healthy")
                };
                // The first tier that meets the threshold, or all tiers when none does.
                let last = (0..3).find(|&t| min.met(up_in(t), 2)).unwrap_or(2);
                for i in 0..6 {
                    let want = healthy[i] && i / 2 <= last;
                    assert_eq!(set[i], want, "{min:?} health {bits:06b}: member {i}");
                }
            }
        }
    }

    #[test]
    fn all_down_policies_and_draining() {
        let m = members(&[0, 0, 1]);
        let none = [false; 3];
        assert_eq!(
            active_set(&m, &none, MinHealthy::Count(1), OnAllDown::Drop),
            Active::Drop
        );
        assert_eq!(
            active_set(&m, &none, MinHealthy::Count(1), OnAllDown::Reject),
            Active::Reject
        );
        assert_eq!(
            active_set(&m, &none, MinHealthy::Count(1), OnAllDown::FailOpen),
            Active::Members(vec![true; 3])
        );
        let mut d = m.clone();
        d[0].drain = true;
        // A draining primary takes no new flows; the healthy one carries the tier.
        assert_eq!(
            active_set(&d, &[true; 3], MinHealthy::Count(1), OnAllDown::Drop),
            Active::Members(vec![false, true, false])
        );
        // Draining counts against the tier's share: with 2 required, the backup joins.
        assert_eq!(
            active_set(&d, &[true; 3], MinHealthy::Count(2), OnAllDown::Drop),
            Active::Members(vec![false, true, true])
        );
    }

    fn d(base: &[u32], m: &[Member], a: &Active) -> Vec<u32> {
        let prefs = Preferences::new(base, m);
        let fast = derive(base, &prefs, m, a);
        assert_eq!(
            fast,
            derive_reference(base, m, a),
            "fast and reference derivations differ"
        );
        fast
    }

    #[test]
    fn fast_derivation_matches_the_reference_across_tiers_and_weights() {
        let mut m = members(&[0, 0, 0, 1, 1, 2]);
        m[4].weight = 3;
        let (_, base) = table_of(3, 1009);
        for bits in 0u32..64 {
            let healthy: Vec<bool> = (0..6).map(|i| bits & (1 << i) != 0).collect();
            for min in [MinHealthy::Count(1), MinHealthy::Count(3)] {
                let a = active_set(&m, &healthy, min, OnAllDown::FailOpen);
                d(&base, &m, &a);
            }
        }
    }

    fn table(n: usize) -> (Vec<Member>, Vec<u32>) {
        table_of(n, 65537)
    }

    /// `n` equal members of tier 0 and their Maglev table of `size` entries.
    fn table_of(n: usize, size: u32) -> (Vec<Member>, Vec<u32>) {
        let names: Vec<String> = (0..n).map(|i| format!("10.0.{i}.2:80")).collect();
        let entries: Vec<crate::maglev::Entry<'_>> = names
            .iter()
            .map(|n| crate::maglev::Entry {
                identity: n,
                weight: 1,
            })
            .collect();
        (members(&vec![0; n]), crate::maglev::build(&entries, size))
    }

    #[test]
    fn a_failure_moves_exactly_its_entries_and_recovery_restores_the_table() {
        let (m, base) = table(10);
        let all = Active::Members(vec![true; 10]);
        let full = d(&base, &m, &all);
        assert_eq!(full, base, "all healthy: the base table itself");
        let mut set = vec![true; 10];
        set[3] = false;
        let failed = d(&base, &m, &Active::Members(set.clone()));
        for (s, (&before, &after)) in full.iter().zip(&failed).enumerate() {
            if before == 3 {
                assert_ne!(after, 3, "entry {s} still on the failed backend");
            } else {
                assert_eq!(
                    after, before,
                    "entry {s} moved although its backend is fine"
                );
            }
        }
        // A second failure moves the second backend's entries, including those it had taken.
        set[7] = false;
        let twice = d(&base, &m, &Active::Members(set.clone()));
        for (s, (&before, &after)) in failed.iter().zip(&twice).enumerate() {
            if before == 7 {
                assert!(after != 7 && after != 3, "entry {s}");
            } else {
                assert_eq!(after, before, "entry {s} moved");
            }
        }
        set[7] = true;
        set[3] = true;
        assert_eq!(
            d(&base, &m, &Active::Members(set)),
            full,
            "recovery restores byte for byte"
        );
        // The failed backend's share spreads over the others.
        let mut spread = [0usize; 10];
        for (&b, &a) in full.iter().zip(&failed) {
            if b == 3 {
                spread[a as usize] += 1;
            }
        }
        let moved: usize = spread.iter().sum();
        for (i, &c) in spread.iter().enumerate() {
            if i != 3 {
                let share = c as f64 / moved as f64;
                assert!((0.07..0.16).contains(&share), "backend {i} took {share:.3}");
            }
        }
    }

    #[test]
    fn same_inputs_same_table() {
        let (m, base) = table(10);
        let mut set = vec![true; 10];
        set[2] = false;
        set[5] = false;
        let a = d(&base, &m, &Active::Members(set.clone()));
        let b = d(&base, &m, &Active::Members(set));
        assert_eq!(a, b);
        assert_eq!(d(&base, &m, &Active::Drop), vec![NO_BACKEND; base.len()]);
        assert_eq!(d(&base, &m, &Active::Reject), vec![REJECT; base.len()]);
    }

    #[test]
    fn weights_steer_reassigned_entries() {
        let (mut m, base) = table(3);
        m[1].weight = 3;
        let set = vec![false, true, true];
        let t = d(&base, &m, &Active::Members(set));
        let (mut to1, mut to2) = (0, 0);
        for (&b, &a) in base.iter().zip(&t) {
            if b == 0 {
                if a == 1 { to1 += 1 } else { to2 += 1 }
            }
        }
        let share = to1 as f64 / (to1 + to2) as f64;
        assert!(
            (0.70..0.80).contains(&share),
            "weight 3 vs 1 took {share:.3}"
        );
    }
}
