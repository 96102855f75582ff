//! The way path-following health checks leave this host (`lb_common::probe`): a veth pair with
//! ARP off ([`PROBE_INTERFACE`] and its peer), `understudy_probe` on its TC egress, and one
//! policy rule per family that sends packets carrying a probe's mark to a table whose default
//! route is that interface. All of it through rtnetlink; every step is idempotent, so a daemon
//! killed with -9 leaves nothing a new one cannot take over.
//!
//! Why an interface of its own: a probe is addressed to the VIP, which the balancer does not hold
//! and normally routes nowhere (or back to the router). Its route must exist for the socket to
//! send at all, must never carry anything but probes, and must not need ARP for the VIP. ARP is
//! off (the neighbour entry is the interface's own MAC), and the TC program sends each probe on
//! to its backend with `bpf_redirect_neigh`, which resolves the backend's (or gateway's) MAC.

use std::{io, net::IpAddr};

use aya::programs::{SchedClassifier, TcAttachType, tc};
use lb_common::probe::{
    PROBE_INTERFACE, PROBE_MARK_MASK, PROBE_MARK_TAG, PROBE_PEER, PROBE_RULE_PRIORITY, PROBE_TABLE,
};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{
        AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
        LinkFlags, LinkInfo, LinkMessage,
    },
    route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};

use super::{Dataplane, netlink::request};
use crate::config::{Check, Config, Mode, Via};

/// The program's name in the object.
pub const PROBE_PROGRAM: &str = "understudy_probe";

/// The probe interface's MTU: below a 1500-byte link's by the largest tunnel overhead (GUE over
/// IPv6, 48 bytes), so a wrapped probe always fits.
const PROBE_MTU: u32 = 1400;

/// Creates (or takes over) the probe interface, attaches `understudy_probe` to its egress and
/// installs the rules and routes. The program stays attached while `dp` lives.
pub fn install(dp: &mut Dataplane) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let index = ensure_link().context("creating the probe interface (a veth pair)")?;
    let prog: &mut SchedClassifier = dp
        .ebpf_mut()
        .program_mut(PROBE_PROGRAM)
        .context("the object has no probe program")?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().context("loading the probe program")?;
    }
    // Kernels before 6.6 attach through a clsact qdisc; it may be there from a previous daemon.
    if let Err(e) = tc::qdisc_add_clsact(PROBE_INTERFACE) {
        tracing::debug!(error = %e, "clsact on the probe interface");
    }
    prog.attach(PROBE_INTERFACE, TcAttachType::Egress)
        .context("attaching the probe program to the probe interface's egress")?;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        add_rule(family).with_context(|| format!("adding the probe rule ({family:?})"))?;
        add_route(family, index).with_context(|| format!("adding the probe route ({family:?})"))?;
    }
    tracing::info!(
        interface = PROBE_INTERFACE,
        table = PROBE_TABLE,
        mark = format_args!("{PROBE_MARK_TAG:#x}/{PROBE_MARK_MASK:#x}"),
        "path-following health checks: probe interface ready"
    );
    Ok(())
}

/// Removes the rules and the interface (its routes go with it). Errors are only logged: this
/// runs on the way out.
pub fn remove() {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        if let Err(e) = request(RouteNetlinkMessage::DelRule(rule(family)), 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(error = %e, ?family, "removing the probe rule");
        }
    }
    if let Some(index) = index_of(PROBE_INTERFACE) {
        let mut link = LinkMessage::default();
        link.header.index = index;
        if let Err(e) = request(RouteNetlinkMessage::DelLink(link), 0) {
            tracing::warn!(error = %e, "removing the probe interface");
        }
    }
}

fn index_of(name: &str) -> Option<u32> {
    Some(super::attach::ifindex(name)).filter(|&i| i != 0)
}

/// The veth pair, created if missing, then both ends up, with ARP off and no IPv6 link-local
/// address on the probe end (so the kernel sends nothing of its own there).
fn ensure_link() -> io::Result<u32> {
    if index_of(PROBE_INTERFACE).is_none() {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(PROBE_PEER.to_string()));
        let mut link = LinkMessage::default();
        link.attributes
            .push(LinkAttribute::IfName(PROBE_INTERFACE.to_string()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        match request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => {}
            // Another daemon (or a race with ourselves) made it: take it over.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    let index = index_of(PROBE_INTERFACE)
        .ok_or_else(|| io::Error::other(format!("{PROBE_INTERFACE} vanished after creation")))?;
    let peer = index_of(PROBE_PEER).unwrap_or(0);
    for (i, noarp) in [(index, true), (peer, false)] {
        if i == 0 {
            continue;
        }
        let mut link = LinkMessage::default();
        link.header.index = i;
        link.header.flags = LinkFlags::Up
            | if noarp {
                LinkFlags::Noarp
            } else {
                LinkFlags::empty()
            };
        link.header.change_mask = LinkFlags::Up | LinkFlags::Noarp;
        link.attributes.push(LinkAttribute::Mtu(PROBE_MTU));
        link.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        request(RouteNetlinkMessage::SetLink(link), 0)?;
    }
    Ok(index)
}

fn rule(family: AddressFamily) -> RuleMessage {
    let mut rule = RuleMessage::default();
    rule.header.family = family;
    rule.header.action = RuleAction::ToTable;
    rule.attributes.extend([
        RuleAttribute::FwMark(PROBE_MARK_TAG),
        RuleAttribute::FwMask(PROBE_MARK_MASK),
        RuleAttribute::Table(PROBE_TABLE),
        RuleAttribute::Priority(PROBE_RULE_PRIORITY),
    ]);
    rule
}

fn add_rule(family: AddressFamily) -> io::Result<()> {
    match request(
        RouteNetlinkMessage::NewRule(rule(family)),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(drop),
    }
}

/// `default dev understudy-hc table PROBE_TABLE`, replacing whatever route is there.
fn add_route(family: AddressFamily, index: u32) -> io::Result<()> {
    let mut route = RouteMessage::default();
    route.header.address_family = family;
    route.header.destination_prefix_length = 0;
    route.header.protocol = RouteProtocol::Static;
    route.header.scope = RouteScope::Link;
    route.header.kind = RouteType::Unicast;
    route.attributes.extend([
        RouteAttribute::Table(PROBE_TABLE),
        RouteAttribute::Oif(index),
    ]);
    request(
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(drop)
}

/// Whether a service of `config` checks its backends along the client's path now.
pub fn needed(config: &Config) -> bool {
    config.services.iter().any(|s| {
        matches!(s.mode, Mode::Dsr | Mode::Tunnel(_))
            && s.health.via == Via::Path
            && s.health.check != Check::None
    })
}

/// The source a probe toward `backend` binds to, when the VIP is of the same family: the
/// balancer's own address toward the backend, which the backend answers to on-link or by its
/// routes. Across families (a 6in4 tunnel) the kernel chooses.
pub fn probe_source(vip: IpAddr, backend: IpAddr) -> Option<IpAddr> {
    if vip.is_ipv4() != backend.is_ipv4() {
        return None;
    }
    super::routes::route_to(backend).ok().and_then(|r| r.source)
}
