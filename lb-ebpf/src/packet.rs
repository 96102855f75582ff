//! Bounds-checked access to packet bytes, in the shapes the verifier accepts, and the header
//! constants the modules share.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};

/// A packet the program can address directly, between `data` and `data_end`: an XDP frame, or
/// an skb's linear part in TC (where the health-check program runs).
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// An untagged Ethernet header's length, and the EtherTypes the programs write.
pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A pointer to a `T` at `offset` into the packet, if the whole `T` is inside it. Keep `T` at two
/// bytes or more: for one byte LLVM rewrites the check as `ptr >= end`, which the verifier does
/// not accept as a bound.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Frame, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a `T` at `offset`, unaligned: IP headers sit at 2-byte boundaries behind Ethernet.
#[inline(always)]
pub fn load<T: Copy>(ctx: &impl Frame, offset: usize) -> Option<T> {
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Writes a `T` at `offset`, unaligned.
#[inline(always)]
pub fn store<T>(ctx: &impl Frame, offset: usize, value: T) -> Option<()> {
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.write_unaligned(value) })
}

/// ICMP and ICMPv6 error types the program reads.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;

/// An IPv6 address's bytes as the four words every key holds (network order in memory).
#[inline(always)]
pub fn words16(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}
