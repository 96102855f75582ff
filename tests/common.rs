//! Helpers the operations tests share: the CLI and the admin API, run from the balancer's
//! namespace (`nsenter --net`, so pinned state under /sys/fs/bpf stays visible).
#![allow(dead_code)]

use understudy_testbed::Netns;

pub const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// Runs `understudy ARGS` in `lb`; returns success, stdout and stderr.
pub fn cli(lb: &Netns, args: &[&str]) -> (bool, String, String) {
    let out = lb
        .command_net_only(BIN)
        .args(args)
        .output()
        .expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One admin request to the default listener, from inside `lb` (its loopback).
pub fn admin(lb: &Netns, token: Option<&str>, method: &str, path: &str) -> (u16, String) {
    lb.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(understudy::admin::client::request(
                understudy::config::DEFAULT_ADMIN_LISTEN.parse().unwrap(),
                token,
                method,
                path,
            ))
    })
    .map(|(s, b)| (s.as_u16(), b))
    .expect("admin request")
}
