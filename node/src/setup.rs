//! Where models live on this machine, and errors that tell the user how to get them.
//!
//! Models are kept outside git, in `$EDGE_MODELS_DIR`, else `$XDG_CACHE_HOME/edge-infer/models`, else
//! `~/.cache/edge-infer/models`. `scripts/setup.sh` fetches them and checks their sha256.

use std::path::{Path, PathBuf};

/// A model this project knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Short name accepted by `--model` (ollama style).
    pub name: &'static str,
    pub file: &'static str,
    pub bytes: u64,
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 (the default model).
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2:135m",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    bytes: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (qwen2 architecture; Q5_0, Q8_0, Q4_K and Q6_K tensors).
pub const QWEN_05B: KnownModel = KnownModel {
    name: "qwen2.5-coder:0.5b",
    file: "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
    bytes: 491_400_064,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
};

/// Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (fetched by `scripts/setup.sh --with-qwen-1.5b`).
pub const QWEN_15B: KnownModel = KnownModel {
    name: "qwen2.5-coder:1.5b",
    file: "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
    bytes: 1_117_320_768,
    sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
};

/// Gemma-3-270M, Q4_K_M (gemma3 architecture: SentencePiece vocabulary, sliding-window attention, one KV head;
/// Q5_0, Q8_0, Q4_K and Q6_K tensors). Google's Gemma terms of use.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3:270m",
    file: "gemma-3-270m-q4_k_m.gguf",
    bytes: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

pub const KNOWN_MODELS: [KnownModel; 4] = [SMOLLM2, QWEN_05B, QWEN_15B, GEMMA3_270M];

/// The command that fetches the models.
pub const SETUP_COMMAND: &str = "bash scripts/setup.sh";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("model file {0} not found; fetch it with `{SETUP_COMMAND}` (or pass --model PATH)")]
    Missing(PathBuf),
    #[error("model file {path} has {actual} bytes, expected {expected}: it is truncated or corrupt; delete it and run `{SETUP_COMMAND}`")]
    WrongSize { path: PathBuf, actual: u64, expected: u64 },
}

pub fn models_dir() -> PathBuf {
    user_dir("EDGE_MODELS_DIR", "XDG_CACHE_HOME", ".cache", "models")
}

/// A per-user directory: `$override_var`, else `$xdg_var/edge-infer/<leaf>`, else `~/<home_rel>/edge-infer/<leaf>`.
pub fn user_dir(override_var: &str, xdg_var: &str, home_rel: &str, leaf: &str) -> PathBuf {
    if let Some(d) = std::env::var_os(override_var) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os(xdg_var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(home_rel)))
        .unwrap_or_else(|| PathBuf::from(home_rel));
    base.join("edge-infer").join(leaf)
}

/// Path of the default model (it may not exist yet).
pub fn default_model() -> PathBuf {
    models_dir().join(SMOLLM2.file)
}

/// Path of a known model in the model cache (it may not exist yet).
pub fn known_model(k: &KnownModel) -> PathBuf {
    models_dir().join(k.file)
}

/// Checks that a model path exists and, for a model this project fetches, has the right size.
pub fn check_model(path: &Path) -> Result<(), SetupError> {
    let meta = std::fs::metadata(path).map_err(|_| SetupError::Missing(path.to_owned()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if let Some(k) = KNOWN_MODELS.iter().find(|k| k.file == name) {
        if meta.len() != k.bytes {
            return Err(SetupError::WrongSize { path: path.to_owned(), actual: meta.len(), expected: k.bytes });
        }
    }
    Ok(())
}

/// The model given on the command line (a path, or a known model's short name such as `qwen2.5-coder:0.5b`),
/// or the default one; checked with [`check_model`].
pub fn resolve_model(arg: Option<&Path>) -> Result<PathBuf, SetupError> {
    let known = |a: &Path| KNOWN_MODELS.iter().find(|k| a.to_str() == Some(k.name)).map(|k| models_dir().join(k.file));
    let path = match arg {
        Some(a) if !a.exists() => known(a).unwrap_or_else(|| a.to_owned()),
        Some(a) => a.to_owned(),
        None => default_model(),
    };
    check_model(&path)?;
    Ok(path)
}
