//! `edge-node bench`: prefill and decode speed of both backends on a real model, and llama.cpp's on the same
//! file when its Python binding is installed, printed as ratios measured in the same run.

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: crate::commands::ModelArgs,
}

pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench: not implemented yet")
}
