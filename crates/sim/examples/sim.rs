//! Developer shortcut: the `lapsd sim` command without building the whole `lapsd` binary (whose
//! engine and server pull in candle and axum). `cargo run -p lapsd-sim --example sim -- --help`.
use clap::Parser;

#[derive(Parser)]
#[command(name = "sim", about = "lapsd sim (simulator only)")]
struct Cli {
    #[command(flatten)]
    args: lapsd_sim::cli::SimArgs,
}

fn main() -> anyhow::Result<()> {
    lapsd_sim::cli::run(Cli::parse().args)
}
