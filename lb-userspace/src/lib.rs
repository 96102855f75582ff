//! `understudy`, the daemon of Understudy, an eBPF-accelerated failover load balancer. It
//! validates the TOML config ([`config`]), computes a Maglev table per service ([`maglev`],
//! [`plan`]), loads the XDP program and writes its maps ([`dataplane`]), and runs until told to
//! stop ([`daemon`]). The binary in `main.rs` is a thin command line over this library.

pub mod admin;
pub mod adopt;
mod allocator;
pub mod announce;
pub mod audit;
#[cfg(test)]
mod btf_names;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod edge;
pub mod ejection;
pub mod explain;
pub mod fallback;
pub mod health;
pub mod l7;
pub mod maglev;
pub mod plan;
pub mod privileges;
pub mod rendezvous;
pub mod status;
pub mod writer;
