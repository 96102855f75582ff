//! The flow hash that picks a position in a service's Maglev ring. Kernel and user space must
//! compute it identically (user space uses it in tests and to predict placement), and every node
//! behind ECMP must too, so it is a fixed function with a fixed seed: MurmurHash3's 32-bit mixing
//! over the key's words. No loops, so the verifier sees straight-line code.

use crate::FlowKey;

const SEED: u32 = 0x5eed_1b00;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of the full 5-tuple: each flow lands independently.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = SEED;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, ((key.src_port as u32) << 16) | key.dst_port as u32);
    h = mix(h, key.proto as u32);
    finish(h, 40)
}

/// Hash of the client address only: every flow of one client lands on the same backend.
#[inline(always)]
pub const fn source_hash(key: &FlowKey) -> u32 {
    let mut h = SEED;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    finish(h, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: u32, port: u16) -> FlowKey {
        FlowKey {
            src: [src, 0, 0, 0],
            dst: [0x0a00_000a, 0, 0, 0],
            src_port: port,
            dst_port: 80,
            proto: 6,
            family: 4,
            _pad: 0,
        }
    }

    #[test]
    fn is_a_fixed_function() {
        // A changed hash silently reshuffles every node's flows: this pins it.
        assert_eq!(flow_hash(&key(1, 2)), flow_hash(&key(1, 2)));
        assert_eq!(flow_hash(&key(0x0200_000a, 40000)), 0xcd17_4005);
    }

    #[test]
    fn spreads_ports_evenly() {
        let mut buckets = [0u32; 7];
        for p in 0..70_000u32 {
            buckets[(flow_hash(&key(7, p as u16)) % 7) as usize] += 1;
        }
        for b in buckets {
            assert!((9_000..11_000).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn source_hash_ignores_ports() {
        assert_eq!(source_hash(&key(9, 1)), source_hash(&key(9, 2)));
        assert_ne!(source_hash(&key(9, 1)), source_hash(&key(10, 1)));
    }
}
