//! Attaching the XDP program to the configured interfaces. Everything is resolved and checked
//! before the first attach, so a bad interface leaves nothing half-attached.

use std::ffi::CString;

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::{XdpLink, XdpMode as AyaMode},
};

use super::{Dataplane, XDP_PROGRAM, maps::DataplaneError};
use crate::config::{Config, ConfigError, XdpMode};

/// Where the program ended up on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    /// "native", "generic", or "adopted" (a pinned link taken over from a previous daemon).
    pub mode: &'static str,
}

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("XDP link of {interface}: {why}")]
    Pin { interface: String, why: String },
    #[error("attaching XDP to {interface} in {mode} mode failed: {source}")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// The interfaces this host has, for error messages.
fn host_interfaces() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(", ")
}

/// The interface's index, 0 when there is none.
pub(crate) fn ifindex(name: &str) -> u32 {
    CString::new(name).map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) })
}

/// Every configured interface with its index, or the error naming the one this host lacks.
pub fn resolve(config: &Config) -> Result<Vec<(String, u32)>, ConfigError> {
    let mut targets = Vec::new();
    for iface in &config.interfaces {
        let index = ifindex(&iface.name);
        if index == 0 {
            return Err(config.interface_error(
                iface,
                &format!("there is no interface \"{}\" on this host", iface.name),
                &format!(
                    "use one of the interfaces `ip link` shows: {}",
                    host_interfaces()
                ),
            ));
        }
        targets.push((iface.name.clone(), index));
    }
    Ok(targets)
}

/// Resolves every configured interface, then attaches the program to each (or takes over the
/// links a previous daemon pinned). Links stay owned by the program, or pinned, and go when the
/// `Dataplane` is dropped or unpinned.
pub fn attach(dp: &mut Dataplane, config: &Config) -> Result<Vec<Attachment>, AttachError> {
    let targets = resolve(config)?;
    let pin_dir = dp.pin_dir().map(std::path::Path::to_path_buf);
    let mut pinned = Vec::new();
    let prog = dp.program(XDP_PROGRAM)?;
    let mut out = Vec::new();
    for (name, index) in targets {
        // A link pinned by a previous daemon: swap the new program in, atomically; packets never
        // see the interface without a program.
        if let Some(dir) = &pin_dir {
            let path = dir.join(format!("link-{name}"));
            if path.exists() {
                let adopted = PinnedLink::from_pin(&path)
                    .map_err(|e| adopt_error(&name, e.to_string()))
                    .and_then(|p| {
                        XdpLink::try_from(FdLink::from(p))
                            .map_err(|e| adopt_error(&name, e.to_string()))
                    })
                    .and_then(|link| {
                        prog.attach_to_link(link)
                            .map_err(|e| adopt_error(&name, e.to_string()))
                    });
                match adopted {
                    Ok(_) => {
                        out.push(Attachment {
                            interface: name.clone(),
                            ifindex: index,
                            mode: "adopted",
                        });
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(interface = %name, error = %e, "cannot adopt the pinned link; attaching afresh");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        let tries: &[(AyaMode, &'static str)] = match config.xdp_mode {
            XdpMode::Native => &[(AyaMode::Driver, "native")],
            XdpMode::Generic => &[(AyaMode::Skb, "generic")],
            XdpMode::Auto => &[(AyaMode::Driver, "native"), (AyaMode::Skb, "generic")],
        };
        let mut last = None;
        for &(mode, label) in tries {
            match prog.attach_to_if_index(index, mode) {
                Ok(id) => {
                    if let Some(dir) = &pin_dir {
                        let path = dir.join(format!("link-{name}"));
                        let link = prog
                            .take_link(id)
                            .map_err(|e| e.to_string())
                            .and_then(|l| FdLink::try_from(l).map_err(|e| e.to_string()))
                            .map_err(|why| adopt_error(&name, why))?;
                        pinned.push(link.pin(&path).map_err(|e| {
                            adopt_error(
                                &name,
                                format!("pinning the link at {}: {e}", path.display()),
                            )
                        })?);
                    }
                    out.push(Attachment {
                        interface: name.clone(),
                        ifindex: index,
                        mode: label,
                    });
                    last = None;
                    break;
                }
                Err(source) => {
                    tracing::debug!(interface = %name, mode = label, error = %source, "attach failed");
                    last = Some(AttachError::Attach {
                        interface: name.clone(),
                        mode: label,
                        source,
                    })
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
    }
    dp.pinned_links.extend(pinned);
    Ok(out)
}

fn adopt_error(interface: &str, why: String) -> AttachError {
    AttachError::Pin {
        interface: interface.to_string(),
        why,
    }
}
