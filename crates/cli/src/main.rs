//! The `lapsd` binary: command-line glue only. Each subcommand's flags and behaviour live in the
//! crate that owns the concern (simulator, server, bench); `lapsd generate` and `lapsd calibrate`
//! are glued here, since calibration joins the engine's measurements to the core's cost profile
//! and the engine does not depend on the core.
use clap::{Parser, Subcommand};

mod calibrate;
mod generate;

#[derive(Parser)]
#[command(
    name = "lapsd",
    version,
    about = "Speculative-decoding LLM server with the LAPS-SD scheduler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Discrete-event simulation of an SD server under every scheduling policy.
    Sim(lapsd_sim::cli::SimArgs),
    /// Generate text from one prompt with speculative decoding (real model).
    Generate(generate::GenerateArgs),
    /// Measure draft/target step costs on this machine and write a cost profile for `lapsd sim`.
    Calibrate(calibrate::CalibrateArgs),
    /// OpenAI-compatible HTTP server whose batches are chosen by the scheduling core.
    Serve(lapsd_server::cli::ServeArgs),
    /// Benchmark client: replay a workload against any OpenAI-compatible server.
    Bench(Box<lapsd_bench::cli::BenchArgs>),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Debug spans (e.g. the engine's sd_step / draft / verify, with RUST_LOG=lapsd_engine=debug)
        // print their busy time when they close: a per-phase timing without a profiler.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
    // Still single-threaded here, as setting the environment requires.
    if let Some(threads) = lapsd_engine::threads::fit_threads_to_cpu_affinity() {
        tracing::info!(
            threads,
            "kernel threads capped at the CPUs this process may use"
        );
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => lapsd_sim::cli::run(args),
        Command::Generate(args) => generate::run_generate(args),
        Command::Calibrate(args) => calibrate::run_calibrate(args),
        Command::Serve(args) => lapsd_server::cli::run(args),
        Command::Bench(args) => lapsd_bench::cli::run(*args),
    }
}
