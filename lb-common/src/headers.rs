//! Outer headers built whole, for the encapsulating modes and the ICMP answers: the kernel writes
//! the bytes these return, and the host tests check them against hand-computed packets. Addresses
//! are in the word layout of every key (network-order bytes); the results are wire bytes.

use crate::checksum::fold;

/// The ones'-complement sum of an address's 16-bit halves (1 word for IPv4, 4 for IPv6), for
/// pseudo-headers.
#[inline(always)]
pub const fn addr_sum(addr: &[u32; 4], words: usize) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 4 {
        if i < words {
            sum += (addr[i] >> 16) as u64 + (addr[i] & 0xffff) as u64;
        }
        i += 1;
    }
    sum
}

/// A 20-byte IPv4 header (no options, no fragment offset) with its checksum. `df` sets Don't
/// Fragment; the identification is 0, as RFC 6864 allows for atomic datagrams.
#[inline(always)]
pub const fn ipv4(
    tos: u8,
    total_len: u16,
    df: bool,
    proto: u8,
    ttl: u8,
    src: u32,
    dst: u32,
) -> [u8; 20] {
    let len = total_len.to_be_bytes();
    let frag: u8 = if df { 0x40 } else { 0 };
    let s = src.to_ne_bytes();
    let d = dst.to_ne_bytes();
    let mut h = [
        0x45, tos, len[0], len[1], 0, 0, frag, 0, ttl, proto, 0, 0, s[0], s[1], s[2], s[3], d[0],
        d[1], d[2], d[3],
    ];
    let mut sum = 0u64;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_ne_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    let check = (!fold(sum)).to_ne_bytes();
    h[10] = check[0];
    h[11] = check[1];
    h
}

/// A 40-byte IPv6 header: traffic class `tc`, a 20-bit flow label, no extension headers.
#[inline(always)]
pub const fn ipv6(
    tc: u8,
    flow_label: u32,
    payload_len: u16,
    next: u8,
    hop_limit: u8,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> [u8; 40] {
    let first = (6u32 << 28 | (tc as u32) << 20 | (flow_label & 0xf_ffff)).to_be_bytes();
    let len = payload_len.to_be_bytes();
    let mut h = [0u8; 40];
    h[0] = first[0];
    h[1] = first[1];
    h[2] = first[2];
    h[3] = first[3];
    h[4] = len[0];
    h[5] = len[1];
    h[6] = next;
    h[7] = hop_limit;
    let mut i = 0;
    while i < 4 {
        let s = src[i].to_ne_bytes();
        let d = dst[i].to_ne_bytes();
        let mut j = 0;
        while j < 4 {
            h[8 + i * 4 + j] = s[j];
            h[24 + i * 4 + j] = d[j];
            j += 1;
        }
        i += 1;
    }
    h
}

/// An 8-byte UDP header (ports in host byte order) with a zero checksum: "none" over IPv4, and
/// over IPv6 the zero checksum RFC 6935 allows for tunnel protocols.
#[inline(always)]
pub const fn udp(src_port: u16, dst_port: u16, len: u16) -> [u8; 8] {
    let s = src_port.to_be_bytes();
    let d = dst_port.to_be_bytes();
    let l = len.to_be_bytes();
    [s[0], s[1], d[0], d[1], l[0], l[1], 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn ipv4_header_matches_a_known_packet() {
        // 172.16.10.99 to 172.16.10.12, total length 0x73, TTL 64, UDP, DF. The words
        // 4500 0073 0000 4000 4011 ac10 0a63 ac10 0a0c sum to 0x23213, folded 0x3215: the
        // checksum is its complement, 0xcdea.
        let h = ipv4(
            0,
            0x73,
            true,
            17,
            64,
            words([172, 16, 10, 99]),
            words([172, 16, 10, 12]),
        );
        assert_eq!(&h[..10], &[0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11]);
        assert_eq!(&h[10..12], &[0xcd, 0xea]);
        // A header with a correct checksum sums to 0xffff.
        let mut sum = 0u64;
        for c in h.chunks(2) {
            sum += u16::from_be_bytes([c[0], c[1]]) as u64;
        }
        assert_eq!(fold(sum), 0xffff);
    }

    #[test]
    fn ipv6_header_places_every_field() {
        let src = [words([0x20, 1, 0xd, 0xb8]), 0, 0, words([0, 0, 0, 1])];
        let dst = [words([0x20, 1, 0xd, 0xb8]), 0, 0, words([0, 0, 0, 2])];
        let h = ipv6(0xb8, 0x12345, 100, 41, 64, &src, &dst);
        assert_eq!(&h[..8], &[0x6b, 0x81, 0x23, 0x45, 0, 100, 41, 64]);
        assert_eq!(&h[8..12], &[0x20, 1, 0xd, 0xb8]);
        assert_eq!(&h[20..24], &[0, 0, 0, 1]);
        assert_eq!(&h[36..40], &[0, 0, 0, 2]);
    }

    #[test]
    fn udp_header_is_big_endian_with_no_checksum() {
        assert_eq!(udp(49153, 6080, 28), [0xc0, 0x01, 0x17, 0xc0, 0, 28, 0, 0]);
    }

    #[test]
    fn addr_sum_adds_halves() {
        assert_eq!(addr_sum(&[0x0001_0002, 9, 9, 9], 1), 3);
        assert_eq!(addr_sum(&[1, 2, 3, 4], 4), 10);
    }
}
