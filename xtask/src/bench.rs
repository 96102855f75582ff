//! `cargo xtask bench`: the XDP program per packet class against a trivial XDP program, in the
//! kernel through `test_run` (see `lb-userspace/benches/xdp.rs`). Figures are ratios to a
//! baseline measured in the same run, because these machines are shared and noisy.

use anyhow::bail;
use clap::Args;

use crate::util::{cmd, is_root};

#[derive(Args)]
pub struct Options {}

pub fn run(_o: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads XDP programs and builds a network namespace: run it as root");
    }
    cmd(
        "cargo",
        &["bench", "--package", "lb-userspace", "--bench", "xdp"],
    )
}
