//! `edge-node`: a cluster member that loads a shard of a GGUF model and runs it.
//!
//! # Layout
//! - [`backend`]: choosing a backend (wgpu, the native CPU kernels, the f32 reference) and loading a model as a chain of shards.
//! - [`gguf`]: memory-mapped GGUF reader (metadata, tensor infos, zero-copy tensor data).
//! - [`quant`]: GGML block formats: geometry, row dequantization, reference quantizers.
//! - [`model`]: hyper-parameters from metadata and the tensors each shard needs.
//! - [`net`]: cluster networking over libp2p (identity, cluster key, event loop, peer table).
//! - [`shard`]: the [`shard::Shard`] trait every backend implements: a layer range serving many sequences.
//! - [`cpu`]: the native CPU backend: SIMD integer dot products per instruction set on a thread pool.
//! - [`reference`]: the plain f32 forward pass, the oracle for every kernel and distributed run.
//! - [`gpu`]: the wgpu executor: WGSL kernels from `shaders/`, weights kept in their quantized blocks.
//! - [`tokenizer`]: GGUF-embedded BPE vocabulary via the `tokenizers` crate, chat prompts, streaming text.
//! - [`tokenizer_spm`]: SentencePiece vocabularies (Gemma) encoded like llama.cpp's SPM tokenizer.
//! - [`chat`]: the model's own chat template (`tokenizer.chat_template`, Jinja via minijinja; ChatML fallback).
//! - [`chat_gemma`]: Gemma's turn format, the fallback for vocabularies with `<start_of_turn>`.
//! - [`sampler`]: greedy, temperature, top-k, top-p with a seed.
//! - [`generate`]: the generation loop over a chain of shards, with timing.
//! - [`bench`]: the `edge-node bench` measurements.
//! - [`perplexity`]: `edge-node perplexity FILE`, as llama.cpp's tool computes it.
//! - [`commands`]: the `generate` and `info` subcommands (the binary only parses arguments).
//! - [`serve`]: `edge-node init` and `serve`: a device joins the cluster and advertises what it can do.
//! - [`stage`]: a node's part of a plan: shipped tensors (cached by hash), the stage worker, pipes to neighbours.
//! - [`setup`]: where models live and the errors that tell a user how to fetch them.

pub mod backend;
pub mod bench;
pub mod chat;
pub mod chat_gemma;
pub mod chat_tools;
pub mod commands;
pub mod cpu;
pub mod generate;
pub mod gguf;
pub mod gguf_writer;
pub mod gpu;
pub mod grammar;
pub mod model;
pub mod net;
pub mod perplexity;
pub mod quant;
pub mod reference;
pub mod sampler;
pub mod serve;
pub mod setup;
pub mod shard;
pub mod stage;
pub mod tokenizer;
mod tokenizer_bpe;
pub mod tokenizer_spm;
