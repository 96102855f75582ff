//! `cargo xtask test`: what CI runs. Formatting, clippy with warnings as errors on the user-space
//! crates, every test (unit, kernel `test_run`, end-to-end in namespaces), then the demo once,
//! the package build with its checks, a 3-minute soak of the real daemon under churn, and the
//! kernel matrix: the in-kernel tests, the bench
//! programs, a daemon smoke and the NAT test again inside a Debian 12 (6.1) guest (`vm.rs`).
//! The privileged tests need root. Without it this command stops with a clear message, and
//! each privileged test fails on its own, so a missing privilege can never look like a pass.

use anyhow::bail;
use clap::Args;

use crate::util::{cmd, is_root};

#[derive(Args)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip the demo smoke run and the package check at the end.
    #[arg(long)]
    no_demo: bool,
    /// Skip the 3-minute soak (`cargo xtask soak`).
    #[arg(long)]
    no_soak: bool,
    /// Skip the kernel matrix (the in-kernel, smoke and NAT tests inside a Debian 12 6.1 guest).
    #[arg(long)]
    no_vm: bool,
    /// Extra arguments for `cargo test` (a test name filter, `--nocapture`...).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the tests load XDP programs and build network namespaces, so they need root \
             (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run `cargo xtask test` as root"
        );
    }
    understudy_testbed::Netns::remove_stale();
    if !o.no_lint {
        cmd("cargo", &["fmt", "--all", "--check"])?;
        cmd(
            "cargo",
            &["clippy", "--all-targets", "--", "-D", "warnings"],
        )?;
    }
    let mut args = vec!["test", "--no-fail-fast"];
    let extra: Vec<&str> = o.cargo_args.iter().map(String::as_str).collect();
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra);
    }
    cmd("cargo", &args)?;
    if !o.no_demo {
        crate::demo::run(&crate::demo::Options {
            once: true,
            kernel: None,
            in_guest: false,
        })?;
        crate::package::run()?;
    }
    if !o.no_soak {
        crate::soak::run(&crate::soak::Options {
            minutes: 3,
            seed: None,
        })?;
    }
    if !o.no_vm {
        // Last: building the bench programs' check switches the dev object to the bench variant.
        crate::vm::matrix("6.1")?;
    }
    println!("xtask test: all passed");
    Ok(())
}
