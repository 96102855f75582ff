//! Helpers the operations tests share: the CLI and the admin API, run from the balancer's
//! namespace (`nsenter --net`, so pinned state under /sys/fs/bpf stays visible).
#![allow(dead_code)]

use std::net::SocketAddr;

use understudy_testbed::{EchoServer, Netns, Topology};

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

/// An echo server on port 8080 of every backend, greeting each connection with "beI\n", so a
/// client knows where it landed.
pub fn named_echo_servers(topo: &Topology) -> Vec<EchoServer> {
    (1..=topo.backends.len())
        .map(|i| {
            EchoServer::start_greeting(
                &topo.backends[i - 1],
                SocketAddr::new(topo.backend_addr(i, false), 8080),
                Some(format!("be{i}\n")),
            )
        })
        .collect()
}
