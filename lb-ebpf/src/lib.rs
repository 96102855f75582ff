#![no_std]
// Present so that `cargo` can treat the crate as a library for tooling; the programs are in main.rs.
