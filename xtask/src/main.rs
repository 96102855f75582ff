//! `cargo xtask`: the project's own commands. `setup` installs what building and testing need
//! (idempotently) and runs by itself before `build`, `run`, `test` and `bench`.

mod bench;
mod build;
mod demo;
mod package;
mod setup;
mod soak;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install nightly's rust-src, bpf-linker, the Debian packages the tests use, and mount bpffs.
    Setup,
    /// Build the daemon with its embedded XDP program.
    Build(build::Options),
    /// Run the demo: client, balancer and 3 HTTP backends in network namespaces.
    Run(demo::Options),
    /// Run formatting and lint checks and every test, privileged ones included (needs root).
    Test(test::Options),
    /// Measure the XDP program per packet class against a trivial program, in the kernel.
    Bench(bench::Options),
    /// Boot a Debian kernel (6.1, or backports' newest) under QEMU on this host's files and run a
    /// command inside: `cargo xtask vm --kernel 6.1 -- uname -r`.
    Vm(vm::Options),
    /// Churn the real daemon for N minutes (flapping backends, reloads, drains, kill -9 restarts,
    /// steady load) and check that nothing healthy broke and nothing leaked.
    Soak(soak::Options),
    /// Build a .deb with the release binary, the systemd unit and the example configs.
    Package,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Build(o) => {
            setup::run()?;
            build::run(&o).map(|_| ())
        }
        Command::Run(o) => {
            // Inside a guest the host has set up and built everything.
            if !o.in_guest {
                setup::run()?;
            }
            demo::run(&o)
        }
        Command::Test(o) => {
            setup::run()?;
            test::run(&o)
        }
        Command::Bench(o) => {
            setup::run()?;
            bench::run(&o)
        }
        Command::Vm(o) => {
            setup::run()?;
            vm::run(&o)
        }
        Command::Soak(o) => {
            setup::run()?;
            soak::run(&o)
        }
        Command::Package => {
            setup::run()?;
            package::run().map(|_| ())
        }
    }
}
