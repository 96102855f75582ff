//! Incremental Internet checksum updates (RFC 1624, equation 3), for NAT rewrites.
//!
//! All values are taken exactly as loaded from packet memory with a native-endian load. The
//! ones'-complement sum is byte-order independent, so neither side swaps bytes, and a `u32` splits
//! into the same two halves a pair of `u16` loads would give.

/// Folds a 64-bit ones'-complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u64 + !old as u64 + new as u64)
}

/// The checksum after one aligned 32-bit word changed from `old` to `new`.
#[inline(always)]
pub const fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    !fold(
        !check as u64
            + (!old >> 16) as u64
            + (!old & 0xffff) as u64
            + (new >> 16) as u64
            + (new & 0xffff) as u64,
    )
}

/// The checksum after an address (1 word for IPv4, 4 for IPv6) changed from `old` to `new`.
#[inline(always)]
pub const fn replace_addr(check: u16, old: &[u32; 4], new: &[u32; 4], words: usize) -> u16 {
    let mut sum = !check as u64;
    let mut i = 0;
    while i < 4 {
        if i < words {
            sum += (!old[i] >> 16) as u64 + (!old[i] & 0xffff) as u64;
            sum += (new[i] >> 16) as u64 + (new[i] & 0xffff) as u64;
        }
        i += 1;
    }
    !fold(sum)
}

/// A UDP-over-IPv4 checksum update: zero means "no checksum" and stays zero, and a computed zero
/// is sent as `0xffff` (RFC 768).
#[inline(always)]
pub const fn udp_fixup(original: u16, updated: u16) -> u16 {
    if original == 0 {
        0
    } else if updated == 0 {
        0xffff
    } else {
        updated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full recomputation over native-endian 16-bit loads, the reference for the updates.
    fn full(bytes: &[u8]) -> u16 {
        let mut sum = 0u64;
        for c in bytes.chunks(2) {
            let w = if c.len() == 2 {
                [c[0], c[1]]
            } else {
                [c[0], 0]
            };
            sum += u16::from_ne_bytes(w) as u64;
        }
        !fold(sum)
    }

    fn load16(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn load32(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// A small deterministic generator, so failures reproduce.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn fill(&mut self, b: &mut [u8]) {
            for x in b {
                *x = self.next() as u8;
            }
        }
    }

    /// A 40-byte block whose checksum lives at bytes 16..18 and sums to zero with it.
    fn block(rng: &mut XorShift) -> [u8; 40] {
        let mut b = [0u8; 40];
        rng.fill(&mut b);
        b[16] = 0;
        b[17] = 0;
        let c = full(&b).to_ne_bytes();
        b[16] = c[0];
        b[17] = c[1];
        b
    }

    #[test]
    fn matches_full_recomputation() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut b = block(&mut rng);
            let check = load16(&b, 16);
            match rng.next() % 3 {
                0 => {
                    let at = 2 * (rng.next() as usize % 8);
                    let old = load16(&b, at);
                    let new = rng.next() as u16;
                    b[at..at + 2].copy_from_slice(&new.to_ne_bytes());
                    let inc = replace_u16(check, old, new);
                    b[16..18].copy_from_slice(&[0, 0]);
                    assert_eq!(inc, full(&b), "u16 at {at}");
                }
                1 => {
                    let at = 20 + 4 * (rng.next() as usize % 5);
                    let old = load32(&b, at);
                    let new = rng.next() as u32;
                    b[at..at + 4].copy_from_slice(&new.to_ne_bytes());
                    let inc = replace_u32(check, old, new);
                    b[16..18].copy_from_slice(&[0, 0]);
                    assert_eq!(inc, full(&b), "u32 at {at}");
                }
                _ => {
                    let old = [load32(&b, 0), load32(&b, 4), load32(&b, 8), load32(&b, 12)];
                    let new = [
                        rng.next() as u32,
                        rng.next() as u32,
                        rng.next() as u32,
                        rng.next() as u32,
                    ];
                    let words = if rng.next().is_multiple_of(2) { 1 } else { 4 };
                    for (i, w) in new.iter().enumerate().take(words) {
                        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                    }
                    let inc = replace_addr(check, &old, &new, words);
                    b[16..18].copy_from_slice(&[0, 0]);
                    assert_eq!(inc, full(&b), "{words}-word address");
                }
            }
        }
    }

    #[test]
    fn nat_rewrite_of_a_real_tcp_packet_verifies() {
        use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
        let mut pkt = std::vec::Vec::new();
        PacketBuilder::ipv4([10, 0, 1, 2], [10, 0, 0, 10], 64)
            .tcp(40000, 80, 1, 1000)
            .syn()
            .write(&mut pkt, b"hello")
            .unwrap();
        // DNAT 10.0.0.10:80 -> 10.0.11.2:8080, as the XDP program does it.
        let old_daddr = load32(&pkt, 16);
        let new_daddr = u32::from_ne_bytes([10, 0, 11, 2]);
        pkt[16..20].copy_from_slice(&new_daddr.to_ne_bytes());
        let ip_check = replace_u32(load16(&pkt, 10), old_daddr, new_daddr);
        pkt[10..12].copy_from_slice(&ip_check.to_ne_bytes());
        let old_port = load16(&pkt, 22);
        let new_port = 8080u16.to_be();
        pkt[22..24].copy_from_slice(&new_port.to_ne_bytes());
        let mut tcp_check = replace_u32(load16(&pkt, 36), old_daddr, new_daddr);
        tcp_check = replace_u16(tcp_check, old_port, new_port);
        pkt[36..38].copy_from_slice(&tcp_check.to_ne_bytes());

        let sliced = SlicedPacket::from_ip(&pkt).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not ipv4")
        };
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
            panic!("not tcp")
        };
        let want = tcp
            .to_header()
            .calc_checksum_ipv4(&header, tcp.payload())
            .unwrap();
        assert_eq!(tcp.checksum(), want);
        assert_eq!(tcp.destination_port(), 8080);
    }

    #[test]
    fn udp_zero_checksum_rules() {
        assert_eq!(udp_fixup(0, 0x1234), 0);
        assert_eq!(udp_fixup(0x1111, 0), 0xffff);
        assert_eq!(udp_fixup(0x1111, 0x2222), 0x2222);
    }
}
