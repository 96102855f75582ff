//! The `understudy` command line: `run` the balancer, or `check` a config without touching the
//! kernel.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use understudy::config::Config;

#[derive(Parser)]
#[command(name = "understudy", version, about = "eBPF failover load balancer")]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, fill its maps from the config, and balance until SIGINT/SIGTERM.
    Run {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and exit: 0 if valid, 2 with the reason if not. Touches no kernel state.
    Check {
        /// The TOML config.
        file: PathBuf,
    },
}

/// Default log filter. aya warns at every load that the kernel refused the object's BTF (Rust
/// type names such as `MaybeUninit<u8>` that aya-log's map carries are not valid BTF names); the
/// programs and maps load without it, so that one message is kept to `aya=error`.
const DEFAULT_LOG_FILTER: &str = "info,aya=error";

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNDERSTUDY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let (Command::Run { config: file } | Command::Check { file }) = &cli.command;
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check { .. } => {
            let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
            println!(
                "{}: valid ({} services, {} backends, {} interfaces)",
                file.display(),
                config.services.len(),
                backends,
                config.interfaces.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run { .. } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(understudy::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
