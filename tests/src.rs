//! Cross-crate integration tests live in `tests/`; this library holds what they share: the real model and its
//! known-good values.

use edge_node::backend::LoadedModel;

/// "Once upon a time, there was a little robot named" (llama.cpp's tokenizer, ../shared/ENVIRONMENT.md).
pub const REFERENCE_PROMPT: &str = "Once upon a time, there was a little robot named";
pub const REFERENCE_IDS: [u32; 11] = [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 3365];

/// Greedy continuation of the reference prompt by the f32 CPU reference (32 tokens). llama.cpp 0.3.36 gives the
/// same first 17 tokens and then diverges: it quantizes activations to 8 bits (Q8_1) for Q4_1 dot products,
/// while the reference and the WGSL kernels keep them in f32.
pub const GREEDY_32: [u32; 32] = [
    659, 4075, 617, 4161, 281, 253, 905, 1135, 282, 40105, 30, 659, 4075, 5732, 288, 1238, 351, 7751, 284, 7751, 856,
    919, 3534, 1636, 30, 198, 198, 2705, 1194, 28, 253, 9077,
];

/// The real SmolLM2 model (`$EDGE_MODEL` or the model cache). Fails, never skips, when it is missing.
pub fn smollm2() -> LoadedModel {
    let path =
        std::env::var_os("EDGE_MODEL").map(std::path::PathBuf::from).unwrap_or_else(edge_node::setup::default_model);
    LoadedModel::open(&path).unwrap_or_else(|e| panic!("{e:#} (run `bash scripts/setup.sh`)"))
}
