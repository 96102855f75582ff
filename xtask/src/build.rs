//! `cargo xtask build`: the daemon, with the XDP object that its build script compiles and embeds.

use std::path::PathBuf;

use clap::Args;

use crate::util::{cmd, target_dir};

#[derive(Args, Default)]
pub struct Options {
    /// Build with optimizations.
    #[arg(long)]
    pub release: bool,
}

/// Builds `understudy` and returns the binary's path.
pub fn run(o: &Options) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "--package", "lb-userspace", "--bin", "understudy"];
    if o.release {
        args.push("--release");
    }
    cmd("cargo", &args)?;
    let profile = if o.release { "release" } else { "debug" };
    Ok(target_dir().join(profile).join("understudy"))
}
