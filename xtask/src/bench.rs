//! `cargo xtask bench [xdp|failover]`: the XDP program per packet class against a trivial XDP
//! program, in the kernel through `test_run` (`lb-userspace/benches/xdp.rs`), and the failover
//! figures (`lb-userspace/benches/failover.rs`). Per-packet figures are ratios to a baseline
//! measured in the same run, because these machines are shared and noisy.

use anyhow::bail;
use clap::Args;

use crate::util::{cmd, is_root};

#[derive(Args)]
pub struct Options {
    /// Which benchmark: `xdp` (per-packet cost) or `failover`; both when omitted.
    which: Option<String>,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads XDP programs and builds a network namespace: run it as root");
    }
    let all = ["xdp", "failover"];
    let chosen: Vec<&str> = match o.which.as_deref() {
        None => all.to_vec(),
        Some(w) if all.contains(&w) => vec![w],
        Some(w) => bail!("no benchmark named {w}; choose one of: {}", all.join(", ")),
    };
    for bench in chosen {
        cmd(
            "cargo",
            &["bench", "--package", "lb-userspace", "--bench", bench],
        )?;
    }
    Ok(())
}
