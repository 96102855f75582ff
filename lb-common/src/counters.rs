//! Indices of the global per-CPU counters (`COUNTERS`). Every packet the program does not forward
//! itself is counted here under the reason it passed or dropped it.

/// One global counter. The discriminant is the index in `COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not IPv4 or IPv6 (ARP, LLDP...).
    PassNotIp = 0,
    /// IP, but neither a VIP nor a reply of a translated flow.
    PassNotVip,
    /// An IPv4 fragment or an IPv6 fragment header: the stack reassembles.
    PassFragment,
    /// A transport or extension header the program does not parse.
    PassUnsupported,
    /// Headers cut short by the end of the packet.
    PassTruncated,
    /// Translated, but the next hop's MAC is not resolved: the stack forwards and resolves it.
    PassNoNeighbour,
    /// Translated, but the FIB did not give a next hop (local, no route, MTU): the stack decides.
    PassFibOther,
    /// Translated a VLAN-tagged packet: the stack forwards it on the right VLAN device.
    PassVlan,
    /// Translated, TTL or hop limit would expire: the stack answers with ICMP.
    PassTtl,
    /// Forwarded out of the interface it came in on.
    Tx,
    /// Forwarded out of another interface.
    Redirect,
    /// A backend reply translated back to the VIP.
    ReplyTranslated,
    /// Dropped: the service's ring has no backend for this flow (no backends configured).
    DropNoBackend,
    /// Dropped: a ring entry names a backend id that has no entry (inconsistent maps).
    DropBadBackend,
    /// Not a drop: the flow could not be remembered in `FLOWS` or `NAT_REPLIES`.
    ErrFlowInsert,
    /// A flow whose backend is no longer alive, moved to a live one on this packet.
    Reselected,
    /// `on_all_down = "reject"`: answered a TCP packet with a RST from XDP.
    RejectRst,
    /// `on_all_down = "reject"` for a packet that cannot get a RST (UDP, a RST, IPv6 extension
    /// headers): dropped.
    DropReject,
    /// A passive-detection event was sent to user space.
    EventSent,
    /// A passive-detection event was lost: the `EVENTS` ring buffer was full.
    ErrEventLost,
}

impl Counter {
    /// Number of counters, the size of `COUNTERS`.
    pub const COUNT: u32 = Counter::ErrEventLost as u32 + 1;

    /// Every counter in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::PassNotIp,
        Counter::PassNotVip,
        Counter::PassFragment,
        Counter::PassUnsupported,
        Counter::PassTruncated,
        Counter::PassNoNeighbour,
        Counter::PassFibOther,
        Counter::PassVlan,
        Counter::PassTtl,
        Counter::Tx,
        Counter::Redirect,
        Counter::ReplyTranslated,
        Counter::DropNoBackend,
        Counter::DropBadBackend,
        Counter::ErrFlowInsert,
        Counter::Reselected,
        Counter::RejectRst,
        Counter::DropReject,
        Counter::EventSent,
        Counter::ErrEventLost,
    ];

    /// Stable snake_case name, used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassNotVip => "pass_not_vip",
            Counter::PassFragment => "pass_fragment",
            Counter::PassUnsupported => "pass_unsupported",
            Counter::PassTruncated => "pass_truncated",
            Counter::PassNoNeighbour => "pass_no_neighbour",
            Counter::PassFibOther => "pass_fib_other",
            Counter::PassVlan => "pass_vlan",
            Counter::PassTtl => "pass_ttl",
            Counter::Tx => "tx",
            Counter::Redirect => "redirect",
            Counter::ReplyTranslated => "reply_translated",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropBadBackend => "drop_bad_backend",
            Counter::ErrFlowInsert => "err_flow_insert",
            Counter::Reselected => "reselected",
            Counter::RejectRst => "reject_rst",
            Counter::DropReject => "drop_reject",
            Counter::EventSent => "event_sent",
            Counter::ErrEventLost => "err_event_lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
    }
}
