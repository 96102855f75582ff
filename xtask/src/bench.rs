//! `cargo xtask bench [xdp|failover|l7|l4|memory]`: the XDP program per packet class against a
//! trivial XDP program, in the kernel through `test_run` (`lb-userspace/benches/xdp.rs`), the
//! failover figures (`lb-userspace/benches/failover.rs`), the HTTP proxy against HAProxy under
//! wrk (`lb-userspace/benches/l7.rs`; installs Debian's haproxy and wrk), routing, the XDP NAT and
//! HAProxy TCP end to end under wrk and iperf3 (`lb-userspace/benches/l4.rs`; adds nginx and iperf3), and the real daemon's
//! memory by config size (`lb-userspace/benches/memory.rs`). Per-packet figures are ratios to a baseline
//! measured in the same run, because these machines are shared and noisy.

use anyhow::bail;
use clap::Args;

use crate::util::is_root;

#[derive(Args)]
pub struct Options {
    /// Which benchmark: `xdp` (per-packet cost), `failover`, `l7`, `l4` or `memory`; all when omitted.
    which: Option<String>,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads XDP programs and builds a network namespace: run it as root");
    }
    let all = ["xdp", "failover", "l7", "l4", "memory"];
    let chosen: Vec<&str> = match o.which.as_deref() {
        None => all.to_vec(),
        Some(w) if all.contains(&w) => vec![w],
        Some(w) => bail!("no benchmark named {w}; choose one of: {}", all.join(", ")),
    };
    for bench in chosen {
        if bench == "l7" {
            crate::setup::packages(&["haproxy", "wrk"])?;
        }
        if bench == "l4" {
            crate::setup::packages(&["haproxy", "wrk", "nginx", "iperf3"])?;
        }
        // Only the per-packet bench needs the wrapper programs in the object.
        let mut c = std::process::Command::new("cargo");
        c.args(["bench", "--package", "lb-userspace", "--bench", bench]);
        if bench == "xdp" {
            c.env("UNDERSTUDY_BENCH_PROGRAMS", "1");
        }
        println!("+ cargo bench --package lb-userspace --bench {bench}");
        let status = c.status()?;
        if !status.success() {
            bail!("cargo bench --bench {bench} failed ({status})");
        }
    }
    Ok(())
}
