//! `lapsd bench` flags (placeholder until the client lands).
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}
pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("lapsd bench is not implemented yet")
}
