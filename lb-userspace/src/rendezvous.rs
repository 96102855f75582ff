//! Weighted rendezvous (highest random weight) ranking, shared by the kernel tables' fallback
//! ([`fallback`](crate::fallback): which active backend takes a failed backend's entry) and the
//! L7 proxy's source-IP affinity ([`l7::select`](crate::l7::select)). One definition, so the two
//! cannot drift apart.
//!
//! A member's score for a key is a fixed mix of its identity hash and the key. With equal weights
//! the raw mix ranks; with weights, `-w / ln(u)` (u uniform in (0, 1]) makes each member's chance
//! of ranking first proportional to its weight (Schindelhauer and Schomaker's weighted variant).

/// SplitMix64's finalizer: a fast, fixed 64-bit mix.
pub const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The score of a member (its identity hash and weight) for `key`; the highest score ranks first.
/// `weighted: false` ranks by the raw mix, which is faster and right when all weights are equal.
pub fn score(identity_hash: u64, weight: u32, key: u64, weighted: bool) -> f64 {
    let h = mix(identity_hash ^ key.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    if !weighted {
        return h as f64;
    }
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    -(weight as f64) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The member ranking first for `key`, among (identity hash, weight) pairs.
    fn first(members: &[(u64, u32)], key: u64) -> usize {
        (0..members.len())
            .max_by(|&a, &b| {
                let sa = score(members[a].0, members[a].1, key, true);
                let sb = score(members[b].0, members[b].1, key, true);
                sa.total_cmp(&sb)
            })
            .unwrap()
    }

    #[test]
    fn first_places_follow_the_weights() {
        let members = [(mix(1), 1), (mix(2), 3)];
        let heavy = (0..40_000u64).filter(|&k| first(&members, k) == 1).count();
        // Expected 30,000; a 1% band is over 10 standard deviations wide.
        assert!((29_700..30_300).contains(&heavy), "{heavy}");
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let all = [(mix(1), 1), (mix(2), 1), (mix(3), 1)];
        let without = [all[0], all[2]];
        for key in 0..5_000u64 {
            let before = first(&all, key);
            let after = first(&without, key);
            if before != 1 {
                assert_eq!(all[before], without[after], "key {key} moved needlessly");
            }
        }
    }

    #[test]
    fn unweighted_and_weighted_agree_when_weights_are_equal() {
        let members = [(mix(7), 2), (mix(8), 2), (mix(9), 2)];
        for key in 0..2_000u64 {
            let raw = (0..3)
                .max_by(|&a, &b| {
                    let sa = score(members[a].0, 2, key, false);
                    let sb = score(members[b].0, 2, key, false);
                    sa.total_cmp(&sb)
                })
                .unwrap();
            assert_eq!(raw, first(&members, key), "key {key}");
        }
    }
}
