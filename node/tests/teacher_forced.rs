//! Model-level agreement of the CPU backend, teacher-forced over a fixed text of ~670 tokens
//! (`fixtures/teacher_text.txt`): the argmax at every position against llama.cpp's (fixtures made by
//! `scripts/llama_cpp_fixture.py` with llama-cpp-python 0.3.36, same ids) and against the f32 reference computed
//! here.
//!
//! Measured (2026-12-05, AVX-512 VNNI path, f16 KV cache, Q4_K/Q6_K repacked): SmolLM2 agrees with llama.cpp at
//! 96.45% of 677 positions and with the reference at 96.90%; Qwen2.5-0.5B at 97.32% and 97.32%. These are near
//! ties that any change of float arithmetic moves either way: llama.cpp itself agrees with the f32 reference at
//! only 97.6% on this text, and with its own fixture run at 96.01-97.32% once its KV cache is f32 or 96.43-96.75%
//! with flash attention on (`llama_cpp_fixture.py --variants`). The floors below (95%) sit under that spread, so a
//! different float order does not fail them while a kernel or layout bug (which moves far more positions) does.

mod common;

use edge_node::cpu::CpuShard;
use edge_node::gguf::Gguf;
use edge_node::model::ModelConfig;
use edge_node::reference::ReferenceShard;
use edge_node::shard::{HeadOutput, Shard, ShardInput, ShardOutput};
use edge_protocol::ShardSpec;

fn fixture(name: &str) -> (Vec<u32>, Vec<u32>) {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let ids = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    (ids("ids"), ids("top1"))
}

fn top1(shard: &mut dyn Shard, ids: &[u32]) -> Vec<u32> {
    shard.open_sequence(1, ids.len()).unwrap();
    match shard.forward(1, ShardInput::Tokens(ids), HeadOutput::ArgmaxAll).unwrap() {
        ShardOutput::Tokens(t) => t,
        other => panic!("{other:?}"),
    }
}

fn agreement(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

fn check(g: &Gguf, cfg: &ModelConfig, fixture_name: &str, what: &str) {
    let (ids, llama) = fixture(fixture_name);
    assert!(ids.len() >= 512, "the text is at least 512 tokens");
    let whole = ShardSpec::whole(cfg.n_layers as u32);
    let cpu = top1(&mut CpuShard::load(g, cfg, whole).unwrap(), &ids);
    let reference = top1(&mut ReferenceShard::load(g, cfg, whole).unwrap(), &ids);
    let (vs_llama, vs_reference) = (agreement(&cpu, &llama), agreement(&cpu, &reference));
    println!(
        "{what}: {} positions, top-1 agreement with llama.cpp {:.2}%, with the f32 reference {:.2}% \
         (llama.cpp with the reference: {:.2}%)",
        ids.len(),
        100.0 * vs_llama,
        100.0 * vs_reference,
        100.0 * agreement(&llama, &reference)
    );
    assert!(vs_llama >= 0.95, "{what}: {:.2}% agreement with llama.cpp", 100.0 * vs_llama);
    assert!(vs_reference >= 0.95, "{what}: {:.2}% agreement with the reference", 100.0 * vs_reference);
}

#[test]
fn smollm2_agrees_with_llama_cpp_and_the_reference() {
    let (g, cfg) = common::smollm2();
    check(&g, &cfg, "llama_cpp_top1_smollm2.json", "SmolLM2-135M Q4_1");
}

#[test]
fn qwen2_agrees_with_llama_cpp_and_the_reference() {
    let (g, cfg) = common::qwen05();
    check(&g, &cfg, "llama_cpp_top1_qwen05.json", "Qwen2.5-Coder-0.5B Q4_K_M");
}

/// `edge-node perplexity` (CPU backend) on the same text within 1% of llama.cpp's perplexity, computed by the
/// fixture script the way `llama-perplexity` does (chunks of 256 tokens, second halves scored). Measured (2026-12-05):
/// SmolLM2 31.86 vs 31.66 (+0.65%), Qwen2.5-0.5B 35.53 vs 35.56 (-0.08%).
#[test]
fn perplexity_matches_llama_cpp_within_one_percent() {
    for (model, fixture_name) in
        [("smollm2:135m", "llama_cpp_top1_smollm2.json"), ("qwen2.5-coder:0.5b", "llama_cpp_top1_qwen05.json")]
    {
        let path = format!("{}/tests/fixtures/{fixture_name}", env!("CARGO_MANIFEST_DIR"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let (want, ctx) = (v["perplexity"]["ppl"].as_f64().unwrap(), v["perplexity"]["ctx"].as_u64().unwrap());
        let text = format!("{}/tests/fixtures/teacher_text.txt", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-node"))
            .args(["perplexity", "--backend", "cpu", "--ctx", &ctx.to_string(), "-m", model, &text])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: f64 =
            stdout.trim().strip_prefix("Final estimate: PPL = ").unwrap_or_else(|| panic!("{stdout}")).parse().unwrap();
        println!("{fixture_name}: perplexity {got:.4}, llama.cpp {want:.4} ({:+.2}%)", 100.0 * (got / want - 1.0));
        assert!((got / want - 1.0).abs() <= 0.01, "{fixture_name}: {got} vs llama.cpp's {want}");
    }
}
