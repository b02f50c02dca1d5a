//! The `strata` command: serve, compactor, export, bench, ctl, and a human client (get/put/delete/scan).

mod allocator;

/// `--features mimalloc`: mimalloc instead of glibc's malloc (a measured alternative; see
/// BENCHMARKS.md for which won).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod bench;
mod client_cli;
mod compaction_args;
mod compactor_cmd;
mod ctl;
mod etcd_args;
mod export_cmd;
mod lifecycle_cmd;
mod metrics_http;
mod security;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "Strata: a key-value store on object storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. With no flags: an embedded single node on ./strata-data.
    #[command(args_override_self = true)]
    Serve(serve::ServeArgs),
    /// Drive a server over gRPC (or the engine in-process, --embedded DIR) and report
    /// throughput and latency percentiles.
    Bench(bench::BenchArgs),
    /// Run a compaction worker of a cluster (workers share the partitions through etcd).
    Compactor(compactor_cmd::CompactorArgs),
    /// Write a consistent snapshot of the store as Parquet (for DuckDB, Spark, pyarrow...).
    Export(export_cmd::ExportArgs),
    /// Administer a cluster through etcd: status, drain, undrain.
    Ctl(ctl::CtlArgs),
    /// Tenants' tokens: `strata token create --tokens-file F --namespace N --rights read,write`.
    Token(security::TokenArgs),
    #[command(flatten)]
    Client(client_cli::ClientCommand),
}

fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> std::process::ExitCode {
    allocator::tune();
    // Test builds only: arm the crash points named in `FAILPOINTS` (compute/src/service/txn.rs).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            rt.block_on(async {
                allocator::spawn_trimmer(std::time::Duration::from_secs(15));
                serve::run(args).await
            })
        }
        Command::Compactor(args) => {
            init_tracing();
            rt.block_on(compactor_cmd::run(args))
        }
        Command::Export(args) => rt.block_on(export_cmd::run(args)),
        Command::Bench(args) => rt.block_on(bench::run(args)),
        Command::Ctl(args) => rt.block_on(ctl::run(args)),
        Command::Client(cmd) => rt.block_on(client_cli::run(cmd)),
        Command::Token(args) => security::run_token(args),
    }
}
