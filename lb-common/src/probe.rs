//! Health checks that follow the client's path (DSR and tunnel modes). The daemon's check socket
//! carries `SO_MARK` = [`mark`]`(mode, backend)`; a policy rule sends marked packets to a table
//! whose one route leads out of the probe interface ([`PROBE_INTERFACE`]); the program on that
//! interface's TC egress (`understudy_probe`) reads the mark back and sends the packet, still
//! addressed to the VIP, the way a client's goes: to the backend's MAC, or wrapped in IPIP/GUE.
//! So a backend whose VIP binding or decapsulation is broken fails its check, as Katran's
//! encapsulated health checks make it.

/// The mark's top byte says "an Understudy probe"; the rule matches it under [`PROBE_MARK_MASK`].
pub const PROBE_MARK_TAG: u32 = 0x5500_0000;
pub const PROBE_MARK_MASK: u32 = 0xff00_0000;

/// The routing table and rule priority the daemon installs for marked probes (below the main
/// table's 32766, above nothing an operator is likely to use).
pub const PROBE_TABLE: u32 = 21_845;
pub const PROBE_RULE_PRIORITY: u32 = 1_100;

/// The probe interface, a veth pair with ARP off whose first end carries the TC program; the
/// peer only exists because a veth comes in pairs.
pub const PROBE_INTERFACE: &str = "understudy-hc";
pub const PROBE_PEER: &str = "understudy-hcp";

/// The mark of a probe toward backend `id` in forwarding mode `mode` (`FORWARD_*`).
#[inline(always)]
pub const fn mark(mode: u32, id: u32) -> u32 {
    PROBE_MARK_TAG | (mode & 0xff) << 16 | (id & 0xffff)
}

/// The mode and backend id a probe's mark carries, if it is one.
#[inline(always)]
pub const fn decode(mark: u32) -> Option<(u32, u32)> {
    if mark & PROBE_MARK_MASK != PROBE_MARK_TAG {
        return None;
    }
    Some(((mark >> 16) & 0xff, mark & 0xffff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FORWARD_DSR, FORWARD_GUE, MAX_BACKENDS};

    #[test]
    fn marks_round_trip_and_others_are_not_probes() {
        for mode in [FORWARD_DSR, FORWARD_GUE] {
            for id in [0, 1, MAX_BACKENDS - 1] {
                assert_eq!(decode(mark(mode, id)), Some((mode, id)));
            }
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode(0x4000), None, "kube-proxy's masquerade mark");
        assert_eq!(decode(0x5600_0001), None);
    }
}
