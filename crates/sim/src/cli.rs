//! `lapsd sim` flags (placeholder until the simulator lands).
#[derive(clap::Args, Debug)]
pub struct SimArgs {}
pub fn run(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("lapsd sim is not implemented yet")
}
