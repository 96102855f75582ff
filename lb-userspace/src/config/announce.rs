//! `[announce]` and each service's `announce`: whether, and through which BIRD 2 instance, this
//! node announces its VIPs, so routers spread clients over the nodes by ECMP.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, error::Locator, health::duration_or_zero};

/// Where BIRD's control socket is on Debian.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// The include file the daemon writes, for `include` in bird.conf.
pub const DEFAULT_INCLUDE: &str = "/run/understudy/bird-vips.conf";
/// How long a stopping node keeps serving after withdrawing its VIPs, so routers move new
/// connections elsewhere before it detaches.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);
/// How often the daemon asks BIRD whether it is alive.
pub const DEFAULT_SPEAKER_CHECK: Duration = Duration::from_secs(2);

/// `[announce]`, when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The file of `protocol static` blocks the daemon (re)writes; bird.conf includes it.
    pub include: PathBuf,
    /// BIRD's control socket, for `configure` and `show status`.
    pub socket: PathBuf,
    /// After withdrawing on SIGTERM (or `understudy node drain`), before detaching.
    pub grace: Duration,
    pub speaker_check: Duration,
}

/// A service's `announce`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnouncePolicy {
    /// Announced while at least one backend is up (healthy and not drained); withdrawn when
    /// none is, as `on_all_down` takes over, so routers send the clients to nodes that can
    /// serve them. The default.
    #[default]
    WhenAvailable,
    /// Announced whenever the node is up and not drained.
    Always,
    /// Never announced (the VIP is routed to this node some other way).
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnounce {
    pub include: Option<Spanned<String>>,
    pub socket: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
    pub speaker_check: Option<Spanned<String>>,
}

pub(super) fn validate(
    at: &Locator<'_>,
    raw: Option<&Spanned<RawAnnounce>>,
) -> Result<Option<Announce>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let r = raw.get_ref();
    let path = |v: &Option<Spanned<String>>, field: &str, default: &str| {
        let Some(v) = v else {
            return Ok(PathBuf::from(default));
        };
        let p = PathBuf::from(v.get_ref());
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(at.error(
                Some(v.span()),
                format!("announce.{field}"),
                format!("\"{}\" is not an absolute path", v.get_ref()),
                "give an absolute path, such as the default",
            ))
        }
    };
    let speaker_check = duration_or_zero(
        at,
        &r.speaker_check,
        "announce.speaker_check".into(),
        DEFAULT_SPEAKER_CHECK,
    )?;
    if speaker_check < Duration::from_millis(100) {
        return Err(at.error(
            r.speaker_check.as_ref().map(Spanned::span),
            "announce.speaker_check",
            format!("{speaker_check:?} is too short"),
            "ask BIRD at most every 100ms, such as \"2s\"",
        ));
    }
    Ok(Some(Announce {
        include: path(&r.include, "include", DEFAULT_INCLUDE)?,
        socket: path(&r.socket, "socket", DEFAULT_BIRD_SOCKET)?,
        grace: duration_or_zero(at, &r.grace, "announce.grace".into(), DEFAULT_GRACE)?,
        speaker_check,
    }))
}
