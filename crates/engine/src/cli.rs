//! `lapsd generate` and `lapsd calibrate` flags (placeholder until the engine lands).
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {}
#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {}
pub fn run_generate(_args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("lapsd generate is not implemented yet")
}
pub fn run_calibrate(_args: CalibrateArgs) -> anyhow::Result<()> {
    anyhow::bail!("lapsd calibrate is not implemented yet")
}
