//! Source access lists, before any flow state: a service's packets from a denied source are
//! refused on every packet, so a reload that denies a source cuts its established flows too,
//! while still-allowed sources keep theirs. The global lists apply first, then the service's
//! own; a source must pass both. Within a scope the longest matching prefix decides, and user
//! space leaves out every allow prefix that lies inside a deny prefix, so deny wins wherever
//! the two overlap.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    FAMILY_V4, ServiceInfo,
    edge::{
        ACL_DENY, ACL_GLOBAL, AclV4, AclV6, DropReason, SERVICE_F_ACL, SERVICE_F_ACL_ALLOWLIST,
        SERVICE_F_GLOBAL_ACL, SERVICE_F_GLOBAL_ALLOWLIST,
    },
};

use crate::{
    maps::{ACL_V4, ACL_V6},
    parse::Parsed,
};

/// The value of the longest prefix in `scope` that holds the packet's source.
#[inline(always)]
pub fn lookup(scope: u32, p: &Parsed) -> Option<u32> {
    let scope = scope.to_be();
    if p.key.family == FAMILY_V4 {
        let key = Key::new(
            64,
            AclV4 {
                scope,
                addr: p.key.src[0],
            },
        );
        ACL_V4.get(&key).copied()
    } else {
        let key = Key::new(
            160,
            AclV6 {
                scope,
                addr: p.key.src,
            },
        );
        ACL_V6.get(&key).copied()
    }
}

/// Why the service's lists refuse the packet's source, if they do.
#[inline(always)]
pub fn refused(p: &Parsed, svc: &ServiceInfo) -> Option<DropReason> {
    if svc.flags & SERVICE_F_GLOBAL_ACL != 0 {
        match lookup(ACL_GLOBAL, p) {
            Some(ACL_DENY) => return Some(DropReason::GlobalDeny),
            None if svc.flags & SERVICE_F_GLOBAL_ALLOWLIST != 0 => {
                return Some(DropReason::GlobalNotAllowed);
            }
            _ => {}
        }
    }
    if svc.flags & SERVICE_F_ACL != 0 {
        match lookup(svc.id, p) {
            Some(ACL_DENY) => return Some(DropReason::Deny),
            None if svc.flags & SERVICE_F_ACL_ALLOWLIST != 0 => {
                return Some(DropReason::NotAllowed);
            }
            _ => {}
        }
    }
    None
}
