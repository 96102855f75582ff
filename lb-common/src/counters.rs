//! Indices of the global per-CPU counters (`COUNTERS`). Every packet the program does not forward
//! itself is counted here under the reason it passed or dropped it.

/// Declares a counter enum, its `ALL` list (index order) and its names from one list, so they
/// cannot drift apart. The discriminant is the index in the enum's per-CPU array map; `COUNT` is
/// that map's size, and `name` the stable snake_case name logs and metrics use. The
/// decapsulator's counters (`forwarding::DecapCounter`) are declared with it too.
macro_rules! counters {
    ($(#[doc = $enum_doc:literal])* $enum:ident { $($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+ }) => {
        $(#[doc = $enum_doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $enum {
            $($(#[doc = $doc])* $variant,)+
        }

        impl $enum {
            /// Every counter in index order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)+];

            /// Number of counters, the size of their map.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name, used in logs and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)+
                }
            }
        }
    };
}

counters! {
/// One global counter. The discriminant is the index in `COUNTERS`.
Counter {
    /// Not IPv4 or IPv6 (ARP, LLDP...).
    PassNotIp => "pass_not_ip",
    /// IP, but neither a VIP nor a reply of a translated flow.
    PassNotVip => "pass_not_vip",
    /// No longer counted (fragments are tracked: `fragment_translated`,
    /// `fragment_before_first`); kept so the indices of a pinned `COUNTERS` stay.
    PassFragment => "pass_fragment",
    /// A transport or extension header the program does not parse.
    PassUnsupported => "pass_unsupported",
    /// Headers cut short by the end of the packet.
    PassTruncated => "pass_truncated",
    /// Translated, but the next hop's MAC is not resolved: the stack forwards and resolves it.
    PassNoNeighbour => "pass_no_neighbour",
    /// Translated, but the FIB did not give a next hop (no route, MTU): the stack decides.
    PassFibOther => "pass_fib_other",
    /// Translated a VLAN-tagged packet: the stack forwards it on the right VLAN device.
    PassVlan => "pass_vlan",
    /// TTL or hop limit would expire here: passed untouched, before any rewrite, so the stack's
    /// time-exceeded quotes the VIP, never a backend.
    PassTtl => "pass_ttl",
    /// Forwarded out of the interface it came in on.
    Tx => "tx",
    /// Forwarded out of another interface.
    Redirect => "redirect",
    /// A backend's reply translated back to the VIP (through `REVERSE`, whether or not its flow
    /// is in `FLOWS`).
    ReplyTranslated => "reply_translated",
    /// Dropped: the service's ring has no backend for this flow (no backends configured).
    DropNoBackend => "drop_no_backend",
    /// Dropped: a ring entry names a backend id that has no entry (inconsistent maps).
    DropBadBackend => "drop_bad_backend",
    /// Not a drop: the flow could not be remembered in `FLOWS`.
    ErrFlowInsert => "err_flow_insert",
    /// A flow whose backend is no longer alive, moved to a live one on this packet.
    Reselected => "reselected",
    /// `on_all_down = "reject"`: answered a TCP packet with a RST from XDP.
    RejectRst => "reject_rst",
    /// `on_all_down = "reject"` for a packet that cannot get a RST (UDP, a RST, IPv6 extension
    /// headers): dropped.
    DropReject => "drop_reject",
    /// A passive-detection event was sent to user space.
    EventSent => "event_sent",
    /// A passive-detection event was lost: the `EVENTS` ring buffer was full.
    ErrEventLost => "err_event_lost",
    // New counters go last: the indices of a pinned `COUNTERS` map must keep their meaning
    // across an upgrade.
    /// An ICMP error about a translated flow that is not evidence against its backend: not
    /// from the backend itself, or a code that does not mean "nothing listens" (frag-needed,
    /// packet too big). Passed on to the stack untouched; no event.
    IcmpNotEvidence => "icmp_not_evidence",
    /// A TCP packet that is not a SYN missed `FLOWS`: an established connection whose flow entry
    /// was evicted (or a stray). It is re-hashed; if the table changed meanwhile it may land on
    /// another backend. The flow loss operators need to see.
    FlowMissEstablished => "flow_miss_established",
    /// No longer counted: a flow has one entry, in `FLOWS`, and its replies are translated
    /// through `REVERSE`. Kept so the indices of a pinned `COUNTERS` stay.
    NatReplyRestored => "nat_reply_restored",
    /// Two VLAN tags (QinQ): passed untouched.
    PassQinq => "pass_qinq",
    /// An IPv6 routing header with segments left: the destination is not final, passed untouched.
    PassRoutingHeader => "pass_routing_header",
    /// UDP over IPv6 with a zero checksum, which RFC 8200 forbids: passed untouched (the stack
    /// discards it), never rewritten.
    PassUdp6ZeroChecksum => "pass_udp6_zero_checksum",
    /// A SYN unanswered past `syn_timeout` while its backend answered other SYNs since: the loss
    /// is on the path (or the client's), not the backend's; no event.
    SynTimeoutNotEvidence => "syn_timeout_not_evidence",
    /// An ICMP error from a backend's side about a translated flow, translated (the VIP as its
    /// source and in its quote) and sent on to the client.
    IcmpToClient => "icmp_to_client",
    /// An ICMP error from the client's side about a translated reply (frag-needed, Packet Too
    /// Big...), translated and sent on to the backend.
    IcmpToBackend => "icmp_to_backend",
    /// A later fragment of a datagram whose first fragment was translated: translated alike.
    FragmentTranslated => "fragment_translated",
    /// A later fragment with no first fragment seen (it came first, or was never translated):
    /// passed to the stack.
    FragmentBeforeFirst => "fragment_before_first",
    /// Dropped: an access list or a rate limit refused the packet (per service and reason in
    /// `SERVICE_DROPS`).
    DropRefused => "drop_refused",
    /// An access list or a rate limit refused a TCP packet and the service answers with a RST.
    RefuseRst => "refuse_rst",
    /// A CPU entered flood mode: its new-flow rate passed `[dataplane] flood_threshold`.
    FloodEnter => "flood_enter",
    /// A CPU left flood mode: a whole window stayed under the threshold.
    FloodLeave => "flood_leave",
    /// A new flow in flood mode, sent by the ring alone and not written to the flow tables.
    FloodUnwritten => "flood_unwritten",
    /// No longer counted (every reply is `reply_translated`, through `REVERSE`). Kept so the
    /// indices of a pinned `COUNTERS` stay.
    ReplyStateless => "reply_stateless",
    /// The FIB does not forward to the destination: it is this host, or there is no route. A
    /// packet from a backend's address and port to this host is the balancer's own connection (a
    /// health check, the L7 proxy), not a reply of a VIP flow: passed untouched. A translated
    /// packet (a backend on this host) goes to the stack too.
    PassNotForwarded => "pass_not_forwarded",
    /// A packet to a backend asked the FIB (its `NEXT_HOPS` entry was missing, stale or too
    /// short for it) and cached the answer. Every other packet to a backend used the cache.
    NextHopLookup => "next_hop_lookup",
    /// Dropped: a DSR backend is not on-link (the FIB names a gateway toward it), so rewriting
    /// the MAC alone would send the packet to a router that sends it back.
    DropDsrNotOnLink => "drop_dsr_not_on_link",
    /// Dropped: the FIB gave a DSR packet no next hop (its neighbour unresolved, no route): the
    /// packet, still addressed to the VIP, cannot go to the stack.
    DropDsrNoHop => "drop_dsr_no_hop",
    /// A packet too big to encapsulate, answered with ICMP frag-needed or Packet Too Big giving
    /// the MTU less the overhead (the client's path-MTU discovery shrinks its segments).
    TooBigAnswered => "too_big_answered",
    /// Dropped: an IPv4 packet without DF too big to encapsulate. XDP cannot fragment it.
    DropTooBig => "drop_too_big",
    /// Dropped: a tunnel backend with no `TUNNELS` entry (inconsistent maps).
    DropNoTunnel => "drop_no_tunnel",
    /// Dropped: the outer headers could not be put in front of the packet (the driver leaves
    /// too little XDP headroom).
    DropEncapFailed => "drop_encap_failed",
    /// A packet encapsulated toward its backend (IPIP or GUE).
    Encapsulated => "encapsulated",
    /// A later fragment could not be handed to `understudy_fragment` (its `PROGRAMS` slot is
    /// empty: a daemon that did not fill it): passed to the stack.
    ErrTailCall => "err_tail_call",
    /// The client's ACK completed a DSR or tunnel flow's handshake (the balancer never sees the
    /// SYN-ACK in these modes): its passive SYN-timeout watch ends.
    HandshakeSeen => "handshake_seen",
    /// A health-check packet sent the client's way (`understudy_probe`: DSR or a tunnel).
    ProbeSent => "probe_sent",
    /// A packet on the probe interface without a probe's mark, or naming no backend: dropped.
    DropProbeUnknown => "drop_probe_unknown",
    /// A probe the FIB gave no route toward its backend (or, in DSR, only through a gateway).
    DropProbeNoRoute => "drop_probe_no_route",
    /// A probe that could not be wrapped or redirected.
    DropProbeFailed => "drop_probe_failed",
    /// A new flow whose ring entry's backend is down went to the entry's alternative: a failure
    /// the kernel saw by the backend's `ALIVE` bit alone, before the writer replaced the entry.
    RingAlternative => "ring_alternative",
    /// A new flow whose ring entry's backend and alternative are both down (two failures before
    /// the writer replaced the entry) stayed on the entry's backend. Brief while the writer
    /// writes the new table; a count that keeps rising means the writer is not writing.
    RingStale => "ring_stale",
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
