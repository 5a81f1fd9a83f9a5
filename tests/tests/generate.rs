//! End to end on the real model: greedy generation on both backends, as one shard and as pipelines of shards
//! (hidden states handed between them, also across backends), and the errors a user can cause.

use edge_node::backend::Backend;
use edge_node::generate::{generate, GenerateError, GenerateRequest};
use edge_node::gpu::GpuOptions;
use edge_node::sampler::SamplingParams;
use edge_node::shard::Shard;
use edge_tests::{smollm2, GREEDY_32, QWEN_GREEDY_16, QWEN_PROMPT, REFERENCE_IDS};

fn greedy(n: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: REFERENCE_IDS.to_vec(),
        max_tokens: n,
        context: 512,
        sampling: SamplingParams::default(),
        stop: vec![],
    }
}

fn run(chain: &mut [Box<dyn Shard>], req: &GenerateRequest) -> Vec<u32> {
    generate(chain, req, |_| true).unwrap().0
}

#[test]
fn cpu_reference_greedy_32_tokens_match_the_golden_sequence() {
    let m = smollm2();
    let mut chain = m.shards(Backend::Reference, &[], &GpuOptions::default()).unwrap();
    assert_eq!(run(&mut chain, &greedy(32)), GREEDY_32);
}

#[test]
fn wgpu_greedy_32_tokens_equal_the_cpu_reference() {
    let m = smollm2();
    let mut chain = m.shards(Backend::Wgpu, &[], &GpuOptions::default()).unwrap();
    assert_eq!(run(&mut chain, &greedy(32)), GREEDY_32);
}

/// Qwen2.5-Coder-0.5B: the CPU reference's greedy tokens are the golden ones, and the wgpu backend (Q5_0, Q8_0,
/// Q4_K and Q6_K kernels; one shard and a pipeline of two) gives the same.
#[test]
fn qwen2_greedy_tokens_on_both_backends() {
    let m = edge_tests::known(&edge_node::setup::QWEN_05B);
    let tok = edge_node::tokenizer::Tokenizer::from_gguf(&m.gguf).unwrap();
    let req = GenerateRequest { prompt: tok.encode(QWEN_PROMPT).unwrap(), ..greedy(16) };
    for (backend, cuts) in [(Backend::Reference, vec![]), (Backend::Wgpu, vec![]), (Backend::Wgpu, vec![9])] {
        let mut chain = m.shards(backend, &cuts, &GpuOptions::default()).unwrap();
        assert_eq!(run(&mut chain, &req), QWEN_GREEDY_16, "{backend:?} cuts {cuts:?}");
    }
}

#[test]
fn two_and_three_wgpu_shards_give_the_same_tokens_as_one() {
    let m = smollm2();
    for cuts in [vec![13], vec![7, 19]] {
        let mut chain = m.shards(Backend::Wgpu, &cuts, &GpuOptions::default()).unwrap();
        assert_eq!(chain.len(), cuts.len() + 1);
        assert_eq!(run(&mut chain, &greedy(32)), GREEDY_32, "cuts {cuts:?}");
    }
}

#[test]
fn a_cpu_shard_can_feed_a_wgpu_shard() {
    let m = smollm2();
    let ctx = edge_node::gpu::GpuContext::new().unwrap();
    let specs = edge_protocol::ShardSpec::split(30, &[4]);
    let mut chain = vec![
        m.shard(Backend::Reference, specs[0], None, &GpuOptions::default()).unwrap(),
        m.shard(Backend::Wgpu, specs[1], Some(&ctx), &GpuOptions::default()).unwrap(),
    ];
    assert_eq!(run(&mut chain, &greedy(12)), GREEDY_32[..12]);
}

#[test]
fn prompt_split_over_several_steps_gives_the_same_tokens() {
    let m = smollm2();
    let opts = GpuOptions { max_step_tokens: 4, ..Default::default() };
    let mut chain = m.shards(Backend::Wgpu, &[], &opts).unwrap();
    assert_eq!(run(&mut chain, &greedy(8)), GREEDY_32[..8]);
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let m = smollm2();
    let mut chain = m.shards(Backend::Wgpu, &[], &GpuOptions::default()).unwrap();
    let mut req = greedy(16);
    req.sampling = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 1234 };
    let a = run(&mut chain, &req);
    let b = run(&mut chain, &req);
    assert_eq!(a, b);
    assert_eq!(a.len(), 16);
}

#[test]
fn bad_requests_fail_with_clear_errors_and_the_shards_stay_usable() {
    let m = smollm2();
    let mut chain = m.shards(Backend::Wgpu, &[], &GpuOptions::default()).unwrap();
    let long = GenerateRequest { context: 8, ..greedy(4) };
    let err = generate(&mut chain, &long, |_| true).unwrap_err();
    assert!(matches!(err, GenerateError::PromptTooLong { prompt: 11, context: 8 }), "{err}");
    assert!(err.to_string().contains("--ctx"));

    let empty = GenerateRequest { prompt: vec![], ..greedy(4) };
    assert!(matches!(generate(&mut chain, &empty, |_| true).unwrap_err(), GenerateError::EmptyPrompt));

    let bad_token = GenerateRequest { prompt: vec![1, 49152], ..greedy(4) };
    let err = generate(&mut chain, &bad_token, |_| true).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");

    let bad_sampling =
        GenerateRequest { sampling: SamplingParams { temperature: -1.0, ..Default::default() }, ..greedy(4) };
    assert!(matches!(generate(&mut chain, &bad_sampling, |_| true).unwrap_err(), GenerateError::Sampling(_)));

    // After all that, the same shards still produce the right tokens.
    assert_eq!(run(&mut chain, &greedy(4)), GREEDY_32[..4]);
}

#[test]
fn generation_stops_at_the_context_limit() {
    let m = smollm2();
    let mut chain = m.shards(Backend::Wgpu, &[], &GpuOptions::default()).unwrap();
    let req = GenerateRequest { context: 16, ..greedy(32) };
    let out = run(&mut chain, &req);
    // Positions 0..11 hold the prompt; tokens 1..5 are fed back at positions 11..15; token 6 is computed at
    // position 15, the last one, and is never fed back.
    assert_eq!(out, GREEDY_32[..6]);
}
