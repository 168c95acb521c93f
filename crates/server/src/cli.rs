//! `lapsd serve` flags (placeholder until the server lands).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("lapsd serve is not implemented yet")
}
