//! Attaching the XDP program to the configured interfaces. Everything is resolved and checked
//! before the first attach, so a bad interface leaves nothing half-attached.

use std::ffi::CString;

use aya::programs::xdp::XdpMode as AyaMode;

use super::{Dataplane, XDP_PROGRAM, maps::DataplaneError};
use crate::config::{Config, ConfigError, XdpMode};

/// Where the program ended up on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    /// "native" or "generic".
    pub mode: &'static str,
}

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
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

fn ifindex(name: &str) -> u32 {
    CString::new(name).map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) })
}

/// Resolves every configured interface, then attaches the program to each. Links stay owned by
/// the program and go when the `Dataplane` is dropped.
pub fn attach(dp: &mut Dataplane, config: &Config) -> Result<Vec<Attachment>, AttachError> {
    let mut targets = Vec::new();
    for iface in &config.interfaces {
        let index = ifindex(&iface.name);
        if index == 0 {
            return Err(config
                .interface_error(
                    iface,
                    &format!("there is no interface \"{}\" on this host", iface.name),
                    &format!(
                        "use one of the interfaces `ip link` shows: {}",
                        host_interfaces()
                    ),
                )
                .into());
        }
        targets.push((iface.name.clone(), index));
    }
    let prog = dp.program(XDP_PROGRAM)?;
    let mut out = Vec::new();
    for (name, index) in targets {
        let tries: &[(AyaMode, &'static str)] = match config.xdp_mode {
            XdpMode::Native => &[(AyaMode::Driver, "native")],
            XdpMode::Generic => &[(AyaMode::Skb, "generic")],
            XdpMode::Auto => &[(AyaMode::Driver, "native"), (AyaMode::Skb, "generic")],
        };
        let mut last = None;
        for &(mode, label) in tries {
            match prog.attach_to_if_index(index, mode) {
                Ok(_) => {
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
    Ok(out)
}
