//! Tensor parallelism on the real model: a stage's layers split across members by KV-head groups and FFN
//! columns (`model::stage::stage_image` with a `LayerSlice`), the members run in lockstep on threads of this
//! process and add up their partial sums through an in-process [`Reducer`]. Both backends must give the unsliced
//! model's greedy tokens and (close to) its hidden states.
//!
//! # Tolerances
//! A member computes `Wo · att` and `W_down · h` over its slice of the inputs, and the stage adds the slices: the
//! same products as the whole matmul, summed in another order. So the hidden states differ from the unsliced
//! model's by f32 reordering noise that the 30 layers carry along (printed by every test), held here to
//! `HIDDEN_TOL` of each position's largest hidden value: far below what a wrong head, column or missing partial
//! does (that is O(1), see `a_partial_shard_needs_the_reduction`). Every member of a stage sums the partials in
//! member order, so all members hold bit-identical residual streams, which the tests check exactly.

mod common;

use common::member_models;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use edge_node::gguf::{parse_bytes, Gguf, Value};
use edge_node::gguf_writer::GgufWriter;
use edge_node::gpu::{GpuContext, GpuOptions, GpuShard};
use edge_node::model::stage::stage_image;
use edge_node::model::ModelConfig;
use edge_node::quant::GgmlType;
use edge_node::reference::ReferenceShard;
use edge_node::shard::{HeadOutput, Reducer, Shard, ShardError, ShardInput, ShardOutput, Step};
use edge_protocol::{LayerSlice, ShardSpec};

/// Two members: KV heads 0..2 and 2..3 (6 and 3 query heads), FFN columns split 2:1.
const TWO_WAY: [LayerSlice; 2] = [
    LayerSlice { kv_heads: (0, 2), ffn: (0, 1024), q_heads: None },
    LayerSlice { kv_heads: (2, 3), ffn: (1024, 1536), q_heads: None },
];
/// Three members: one KV head (3 query heads, O input width 192) each, FFN columns split unevenly in 32-column
/// blocks (736, 480, 320).
const THREE_WAY: [LayerSlice; 3] = [
    LayerSlice { kv_heads: (0, 1), ffn: (0, 736), q_heads: None },
    LayerSlice { kv_heads: (1, 2), ffn: (736, 1216), q_heads: None },
    LayerSlice { kv_heads: (2, 3), ffn: (1216, 1536), q_heads: None },
];

/// Hidden states (per position) and logits of a stage against the unsliced model, relative to the largest
/// value (see the module comment; measured below 2e-6 on this machine).
const HIDDEN_TOL: f32 = 1e-4;
/// Greedy tokens decoded after the prompt.
const DECODE: usize = 16;

// ---------------------------------------------------------------------------------------------------------------
// The in-process stage: a reducer shared by k member threads

/// How long a member waits for the others before it gives up (a bug must fail the test, not hang it).
const REDUCE_TIMEOUT: Duration = Duration::from_secs(300);

/// The members of one stage meeting at every `all_reduce`. Round r holds each member's r-th partial; every
/// member sums all of them in member order (so every member gets the same bits) and the round is dropped once
/// all have read it.
struct Stage {
    k: usize,
    state: Mutex<StageState>,
    cv: Condvar,
}

#[derive(Default)]
struct StageState {
    rounds: HashMap<u64, Round>,
    /// Members whose thread has ended: a round they did not join can never complete.
    left: usize,
}

struct Round {
    partials: Vec<Option<Vec<f32>>>,
    unread: usize,
}

/// One member's side of the stage.
struct Member {
    stage: Arc<Stage>,
    index: usize,
    /// `all_reduce` calls so far.
    rounds: u64,
}

impl Reducer for Member {
    fn all_reduce(&mut self, partial: &mut [f32]) -> Result<(), ShardError> {
        let stage = &*self.stage;
        let fail =
            |why: String| Err(ShardError::BadInput(format!("member {} round {}: {why}", self.index, self.rounds)));
        let mut st = stage.state.lock().unwrap();
        let round =
            st.rounds.entry(self.rounds).or_insert_with(|| Round { partials: vec![None; stage.k], unread: stage.k });
        round.partials[self.index] = Some(partial.to_vec());
        stage.cv.notify_all();
        let deadline = Instant::now() + REDUCE_TIMEOUT;
        while st.rounds[&self.rounds].partials.iter().any(Option::is_none) {
            let now = Instant::now();
            if st.left > 0 || now >= deadline {
                return fail("the other members did not all take part".into());
            }
            st = stage.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        let round = st.rounds.get_mut(&self.rounds).unwrap();
        let mut total = vec![0.0f32; partial.len()];
        for p in round.partials.iter().flatten() {
            if p.len() != total.len() {
                return fail(format!("partials of {} and {} floats", p.len(), total.len()));
            }
            total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
        }
        round.unread -= 1;
        if round.unread == 0 {
            st.rounds.remove(&self.rounds);
        }
        partial.copy_from_slice(&total);
        self.rounds += 1;
        Ok(())
    }
}

/// Marks a member as gone when its thread ends, however it ends.
struct Leave(Arc<Stage>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner()).left += 1;
        self.0.cv.notify_all();
    }
}

/// Runs `f` on every member at once, one thread each, with one stage between them; returns each member's result
/// and its number of `all_reduce` calls.
fn lockstep<S: Shard + Send, T: Send>(
    members: &mut [S],
    f: impl Fn(&mut S, &mut dyn Reducer) -> Result<T, ShardError> + Sync,
) -> Vec<(T, u64)> {
    let stage = Arc::new(Stage { k: members.len(), state: Default::default(), cv: Condvar::new() });
    std::thread::scope(|scope| {
        let threads: Vec<_> = members
            .iter_mut()
            .enumerate()
            .map(|(index, shard)| {
                let (stage, f) = (stage.clone(), &f);
                scope.spawn(move || {
                    let _leave = Leave(stage.clone());
                    let mut member = Member { stage, index, rounds: 0 };
                    let out = f(shard, &mut member);
                    out.map(|o| (o, member.rounds))
                })
            })
            .collect();
        threads
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.join().unwrap().unwrap_or_else(|e| panic!("member {i}: {e}")))
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Members, outputs and comparisons

fn gpu_members(
    ctx: &Arc<GpuContext>,
    models: &[(Gguf, ModelConfig)],
    spec: ShardSpec,
    opts: &GpuOptions,
) -> Vec<GpuShard> {
    models.iter().map(|(m, c)| GpuShard::load(ctx.clone(), m, c, spec, opts.clone()).unwrap()).collect()
}

fn hidden(out: ShardOutput) -> Vec<f32> {
    match out {
        ShardOutput::Hidden(h) => h,
        other => panic!("expected hidden states, got {other:?}"),
    }
}

fn tokens(out: ShardOutput) -> Vec<u32> {
    match out {
        ShardOutput::Tokens(t) => t,
        other => panic!("expected tokens, got {other:?}"),
    }
}

/// Largest absolute difference, and the largest absolute value of `want`.
fn max_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    (diff, want.iter().map(|v| v.abs()).fold(0.0, f32::max))
}

/// Every member returned the same thing (they hold the same residual stream, bit for bit).
fn same_on_every_member<T: PartialEq + std::fmt::Debug>(outs: Vec<(T, u64)>) -> (T, u64) {
    let mut outs = outs.into_iter();
    let first = outs.next().unwrap();
    for (i, o) in outs.enumerate() {
        assert!(o == first, "member {} differs from member 0", i + 1);
    }
    first
}

/// Each position's hidden state against the unsliced one, relative to that position's largest value (the
/// first position's residual stream is ~100x larger than the others', so one scale for all would hide them).
fn check_hidden(what: &str, got: &[f32], want: &[f32], dim: usize) {
    assert_eq!(got.len(), want.len());
    let (mut worst, mut abs) = (0.0f32, 0.0f32);
    for (g, w) in got.chunks_exact(dim).zip(want.chunks_exact(dim)) {
        let (diff, scale) = max_diff(g, w);
        worst = worst.max(diff / scale);
        abs = abs.max(diff);
    }
    println!("{what}: max abs diff {abs:.3e}, largest relative to its position's largest value {worst:.2e}");
    assert!(worst <= HIDDEN_TOL, "{what}: hidden states differ by {worst:e} of their scale");
}

/// The greedy run both backends' stages are checked with: the prompt with `ArgmaxAll` (its last token is the
/// first generated), `DECODE - 1` steps with `ArgmaxLast`, then one step with `LogitsLast`.
#[derive(Debug, PartialEq)]
struct Greedy {
    prompt_argmax: Vec<u32>,
    generated: Vec<u32>,
    logits: Vec<f32>,
}

fn greedy(shard: &mut dyn Shard, reduce: &mut dyn Reducer) -> Result<Greedy, ShardError> {
    shard.open_sequence(1, common::REFERENCE_IDS.len() + DECODE + 1)?;
    let prompt_argmax =
        tokens(shard.forward_reduce(1, ShardInput::Tokens(&common::REFERENCE_IDS), HeadOutput::ArgmaxAll, reduce)?);
    let mut generated = vec![*prompt_argmax.last().unwrap()];
    while generated.len() < DECODE {
        let out = shard.forward_reduce(
            1,
            ShardInput::Tokens(&generated[generated.len() - 1..]),
            HeadOutput::ArgmaxLast,
            reduce,
        )?;
        generated.extend(tokens(out));
    }
    let logits =
        match shard.forward_reduce(1, ShardInput::Tokens(&generated[DECODE - 1..]), HeadOutput::LogitsLast, reduce)? {
            ShardOutput::Logits(l) => l,
            other => panic!("expected logits, got {other:?}"),
        };
    shard.close_sequence(1);
    Ok(Greedy { prompt_argmax, generated, logits })
}

/// An embedding's head output over the prompt: the sum of its final-normed hidden states.
fn pooled(shard: &mut dyn Shard, reduce: &mut dyn Reducer) -> Result<Vec<f32>, ShardError> {
    shard.open_sequence(2, 64)?;
    let out = shard.forward_reduce(2, ShardInput::Tokens(&common::REFERENCE_IDS), HeadOutput::HiddenSum, reduce)?;
    shard.close_sequence(2);
    match out {
        ShardOutput::HiddenSum(s) => Ok(s),
        other => panic!("expected a hidden sum, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

/// CPU reference: 2- and 3-way stages of the whole layer stack give the unsliced model's hidden states for the
/// prompt (members bit-identical), and the known argmax sequence through the (replicated) head.
#[test]
fn cpu_stages_match_the_whole_model() {
    let (g, cfg) = common::smollm2();
    let body = ShardSpec { layer_start: 0, layer_end: 30, embed: true, head: false };
    let head_spec = ShardSpec { layer_start: 30, layer_end: 30, embed: false, head: true };
    let prompt = ShardInput::Tokens(&common::REFERENCE_IDS);
    let mut head = ReferenceShard::load(&g, &cfg, head_spec).unwrap();
    let mut argmax = |h: &[f32]| {
        head.open_sequence(1, 64).unwrap();
        let t = tokens(head.forward(1, ShardInput::Hidden(h), HeadOutput::ArgmaxAll).unwrap());
        head.close_sequence(1);
        t
    };

    for (name, slices) in [("2-way", &TWO_WAY[..]), ("3-way", &THREE_WAY[..])] {
        let (got, want) = reference_members_and_whole(&g, &cfg, body, slices, prompt, &format!("cpu {name}"));
        assert_eq!(argmax(&want), common::REFERENCE_ARGMAX);
        assert_eq!(argmax(&got), common::REFERENCE_ARGMAX, "{name}");
    }
}

/// Reference-backend members of `slices` in lockstep over `prompt` against the unsliced shard `body`: the hidden
/// states of both (checked within f32 reordering noise, two reductions per layer, the same on every member).
fn reference_members_and_whole(
    g: &Gguf,
    cfg: &ModelConfig,
    body: ShardSpec,
    slices: &[LayerSlice],
    prompt: ShardInput<'_>,
    name: &str,
) -> (Vec<f32>, Vec<f32>) {
    let mut whole = ReferenceShard::load(g, cfg, body).unwrap();
    whole.open_sequence(1, 64).unwrap();
    let want = hidden(whole.forward(1, prompt, HeadOutput::ArgmaxAll).unwrap());
    let models = member_models(g, cfg, body, slices);
    let mut members: Vec<ReferenceShard> =
        models.iter().map(|(m, c)| ReferenceShard::load(m, c, body).unwrap()).collect();
    let outs = lockstep(&mut members, |shard, reduce| {
        shard.open_sequence(1, 64)?;
        shard.forward_reduce(1, prompt, HeadOutput::ArgmaxAll, reduce).map(hidden)
    });
    let (got, rounds) = same_on_every_member(outs);
    assert_eq!(rounds, 2 * cfg.n_layers as u64, "{name}: two reductions per layer for the step");
    check_hidden(name, &got, &want, cfg.dim);
    (got, want)
}

/// Gemma 3 has one key/value head: its members split the 4 query heads (each holding the key/value head whole)
/// and the FFN columns (in 256-column blocks), and norm the summed attention and FFN outputs (post-norms).
/// - reference (f32): 2- and 4-way stages give the unsliced hidden states over the short prompt within f32
///   reordering noise, and its argmax.
/// - cpu: they give the unsliced shard's greedy continuation, and its argmax at most of 600 positions (past the
///   sliding window). Not all: the partial sums add in another order, and the 8-bit activations of the next
///   matmul turn that f32 noise into a rounding step now and then, as any two 8-bit implementations differ
///   (cpu vs numpy agree at 94% on this text, llama.cpp vs numpy at 94.5%). A wrong head or window gives far
///   less (about 74% past the window without it).
#[test]
fn gemma3_stages_split_query_heads() {
    let (g, cfg) = common::gemma3();
    let r = common::gemma3_reference();
    let spec = ShardSpec::whole(18);
    let ids = &r.long.ids[..600];
    let run = |shard: &mut dyn Shard, reduce: &mut dyn Reducer| -> Result<(Vec<u32>, Vec<u32>), ShardError> {
        shard.open_sequence(1, ids.len() + 8)?;
        let all = tokens(shard.forward_reduce(1, ShardInput::Tokens(ids), HeadOutput::ArgmaxAll, reduce)?);
        shard.close_sequence(1);
        shard.open_sequence(2, 64)?;
        let mut next =
            tokens(shard.forward_reduce(2, ShardInput::Tokens(&r.short.ids), HeadOutput::ArgmaxLast, reduce)?);
        let mut generated = next.clone();
        while generated.len() < 8 {
            next = tokens(shard.forward_reduce(2, ShardInput::Tokens(&next), HeadOutput::ArgmaxLast, reduce)?);
            generated.extend(&next);
        }
        shard.close_sequence(2);
        Ok((all, generated))
    };
    let mut whole = edge_node::cpu::CpuShard::load(&g, &cfg, spec).unwrap();
    let (want_all, want_greedy) = run(&mut whole, &mut edge_node::shard::NoReduce).unwrap();
    assert_eq!(&want_greedy[..], &r.llama_cpp.greedy[..8]);

    let slice = |q: (u32, u32), ffn: (u32, u32)| LayerSlice { kv_heads: (0, 1), ffn, q_heads: Some(q) };
    let two = [slice((0, 2), (0, 1024)), slice((2, 4), (1024, 2048))];
    let four =
        [slice((0, 1), (0, 512)), slice((1, 2), (512, 1024)), slice((2, 3), (1024, 1536)), slice((3, 4), (1536, 2048))];
    for (name, slices) in [("2-way", &two[..]), ("4-way", &four[..])] {
        let models = member_models(&g, &cfg, spec, slices);
        assert_eq!((models[0].1.n_heads, models[0].1.n_kv_heads), (4 / slices.len(), 1));
        let mut members: Vec<edge_node::cpu::CpuShard> =
            models.iter().map(|(m, c)| edge_node::cpu::CpuShard::load(m, c, spec).unwrap()).collect();
        let ((all, greedy), _) = same_on_every_member(lockstep(&mut members, |s, reduce| run(s, reduce)));
        let same = all.iter().zip(&want_all).filter(|(a, b)| a == b).count();
        println!("gemma3 {name}: {same} of {} positions give the unsliced argmax", all.len());
        // The partial sums add in another order (f32 noise): a near-tie may flip, a wrong head or window would not
        // come close (about 74% past the window without it).
        assert!(same * 100 >= all.len() * 90, "{name}: {same} of {} positions", all.len());
        assert_eq!(greedy, want_greedy, "{name}");

        let body = ShardSpec { head: false, ..spec };
        let prompt = ShardInput::Tokens(&r.short.ids);
        reference_members_and_whole(&g, &cfg, body, slices, prompt, &format!("gemma3 reference {name}"));
    }
}

/// wgpu: 2- and 3-way stages of the whole model (embedding and head on every member) give the known argmax
/// sequence over the prompt and the unsliced shard's 16 greedy tokens and last logits. The 3-way stage runs the
/// prompt in steps of 4 positions.
#[test]
fn wgpu_stages_match_the_whole_model() {
    let (g, cfg) = common::smollm2();
    let ctx = GpuContext::new().unwrap();
    let spec = ShardSpec::whole(30);
    let mut whole = GpuShard::load(ctx.clone(), &g, &cfg, spec, GpuOptions::default()).unwrap();
    let want = greedy(&mut whole, &mut edge_node::shard::NoReduce).unwrap();
    let want_sum = pooled(&mut whole, &mut edge_node::shard::NoReduce).unwrap();
    drop(whole);
    assert_eq!(want.prompt_argmax, common::REFERENCE_ARGMAX);
    println!("unsliced wgpu greedy tokens: {:?}", want.generated);

    let chunked = GpuOptions { max_step_tokens: 4, ..GpuOptions::default() };
    for (name, slices, opts, steps) in
        [("2-way", &TWO_WAY[..], GpuOptions::default(), 1 + DECODE), ("3-way", &THREE_WAY[..], chunked, 3 + DECODE)]
    {
        let mut members = gpu_members(&ctx, &member_models(&g, &cfg, spec, slices), spec, &opts);
        let t = Instant::now();
        let outs = lockstep(&mut members, |shard, reduce| greedy(shard, reduce));
        println!("wgpu {name}: prompt and {DECODE} tokens in {:.2?}", t.elapsed());
        let (got, rounds) = same_on_every_member(outs);
        assert_eq!(rounds, 60 * steps as u64, "{name}: two reductions per layer and step");
        assert_eq!(got.prompt_argmax, common::REFERENCE_ARGMAX, "{name}");
        assert_eq!(got.generated, want.generated, "{name}");
        let (diff, scale) = max_diff(&got.logits, &want.logits);
        println!("wgpu {name}: last logits max abs diff {diff:.3e} (largest |logit| {scale:.1})");
        assert!(diff <= HIDDEN_TOL * scale, "{name}: logits differ by {diff}");
        // An embedding's pooled hidden states too (every member holds them).
        let (sum, _) = same_on_every_member(lockstep(&mut members, |shard, reduce| pooled(shard, reduce)));
        let (diff, scale) = max_diff(&sum, &want_sum);
        assert!(diff <= HIDDEN_TOL * scale, "{name}: pooled hidden states differ by {diff} (largest {scale})");
    }
}

/// wgpu members batch: three sequences' prompts in one step, then their decode steps together (one with logits,
/// two greedy) give each sequence what the same members give it alone, bit for bit.
#[test]
fn wgpu_members_batch_sequences() {
    let (g, cfg) = common::smollm2();
    let ctx = GpuContext::new().unwrap();
    let spec = ShardSpec::whole(30);
    let mut members = gpu_members(&ctx, &member_models(&g, &cfg, spec, &TWO_WAY), spec, &GpuOptions::default());
    let prompts: [&[u32]; 3] = [&[1, 504, 3458, 282], &[28, 1097], &[9, 40, 2368, 288, 4042, 30]];
    let wants = [HeadOutput::LogitsLast, HeadOutput::ArgmaxLast, HeadOutput::ArgmaxLast];
    // Each sequence's outputs: the prompt's, then 4 decode steps' (the next input is the argmax).
    let run = |shard: &mut GpuShard, reduce: &mut dyn Reducer, seqs: &[usize]| -> Result<_, ShardError> {
        let mut inputs: Vec<Vec<u32>> = seqs.iter().map(|&i| prompts[i].to_vec()).collect();
        let mut outs: Vec<Vec<ShardOutput>> = vec![Vec::new(); seqs.len()];
        for &i in seqs {
            shard.open_sequence(i as u64, 32)?;
        }
        for _ in 0..5 {
            let steps: Vec<Step> = seqs
                .iter()
                .zip(&inputs)
                .map(|(&i, ids)| Step { seq: i as u64, input: ShardInput::Tokens(ids), want: wants[i] })
                .collect();
            let out = shard.forward_batch(&steps, reduce)?;
            for ((o, input), all) in out.into_iter().zip(&mut inputs).zip(&mut outs) {
                *input = match &o {
                    ShardOutput::Logits(l) => vec![edge_node::reference::argmax(l)],
                    ShardOutput::Tokens(t) => t.clone(),
                    other => panic!("unexpected {other:?}"),
                };
                all.push(o);
            }
        }
        for &i in seqs {
            shard.close_sequence(i as u64);
        }
        Ok(outs)
    };
    let (batched, _) = same_on_every_member(lockstep(&mut members, |shard, reduce| run(shard, reduce, &[0, 1, 2])));
    for (i, batched) in batched.iter().enumerate() {
        let (alone, _) = same_on_every_member(lockstep(&mut members, |shard, reduce| run(shard, reduce, &[i])));
        assert_eq!(batched, &alone[0], "sequence {i}: batched and alone differ");
    }
}

/// wgpu, gemma3 (one KV head: members split the query heads and hold the KV head whole; the post-norms apply to
/// the summed outputs, on the host):
/// - the real model, 2 members: numpy's argmax over the short prompt and its greedy continuation, as one shard;
/// - the tiny gemma3 (window 6), 2 members in steps of 32 over 300 positions (the local layers' rings wrap): the
///   reference's argmax at every position.
#[test]
fn wgpu_gemma3_stages_split_query_heads() {
    let ctx = GpuContext::new().unwrap();
    let slice = |q: (u32, u32), ffn: (u32, u32)| LayerSlice { kv_heads: (0, 1), ffn, q_heads: Some(q) };
    let (g, cfg) = common::gemma3();
    let r = common::gemma3_reference();
    let spec = ShardSpec::whole(18);
    let two = [slice((0, 2), (0, 1024)), slice((2, 4), (1024, 2048))];
    let mut members = gpu_members(&ctx, &member_models(&g, &cfg, spec, &two), spec, &GpuOptions::default());
    let run = |shard: &mut GpuShard, reduce: &mut dyn Reducer| -> Result<(Vec<u32>, Vec<u32>), ShardError> {
        shard.open_sequence(1, 64)?;
        let all = tokens(shard.forward_reduce(1, ShardInput::Tokens(&r.short.ids), HeadOutput::ArgmaxAll, reduce)?);
        let mut generated = vec![*all.last().unwrap()];
        while generated.len() < 8 {
            let next = [*generated.last().unwrap()];
            generated.extend(tokens(shard.forward_reduce(
                1,
                ShardInput::Tokens(&next),
                HeadOutput::ArgmaxLast,
                reduce,
            )?));
        }
        Ok((all, generated))
    };
    let ((all, generated), _) = same_on_every_member(lockstep(&mut members, run));
    assert_eq!(all, r.short.argmax, "gemma3 2-way: argmax over the prompt");
    assert_eq!(generated, r.greedy[..8], "gemma3 2-way: greedy continuation");
    drop(members);

    let (g, cfg) = common::tiny::Tiny::gemma3().load();
    let spec = ShardSpec::whole(4);
    let ids = common::tiny::prompt(cfg.vocab, 300, 5);
    let mut whole = ReferenceShard::load(&g, &cfg, spec).unwrap();
    whole.open_sequence(1, 320).unwrap();
    let want = tokens(whole.forward(1, ShardInput::Tokens(&ids), HeadOutput::ArgmaxAll).unwrap());
    let two = [slice((0, 1), (0, 256)), slice((1, 2), (256, 512))];
    let opts = GpuOptions { max_step_tokens: 32, ..GpuOptions::default() };
    let mut members = gpu_members(&ctx, &member_models(&g, &cfg, spec, &two), spec, &opts);
    let outs = lockstep(&mut members, |shard, reduce| {
        shard.open_sequence(1, 320)?;
        shard.forward_reduce(1, ShardInput::Tokens(&ids), HeadOutput::ArgmaxAll, reduce).map(tokens)
    });
    let (got, _) = same_on_every_member(outs);
    assert_eq!(got, want, "tiny gemma3 2-way over 300 positions");
}

/// wgpu: a 3-way stage in the middle of a pipeline (layers 10..20, no embedding or head, hidden states in from the
/// unsliced first shard) matches the unsliced middle shard, for the prompt and for one decode step.
#[test]
fn wgpu_middle_stage_matches_the_whole_stage() {
    let (g, cfg) = common::smollm2();
    let ctx = GpuContext::new().unwrap();
    let opts = GpuOptions::default();
    let [first, mid, _] = ShardSpec::split(30, &[10, 20])[..] else { unreachable!() };
    let mut first = GpuShard::load(ctx.clone(), &g, &cfg, first, opts.clone()).unwrap();
    let mut whole_mid = GpuShard::load(ctx.clone(), &g, &cfg, mid, opts.clone()).unwrap();
    let mut members = gpu_members(&ctx, &member_models(&g, &cfg, mid, &THREE_WAY), mid, &opts);
    for s in [&mut first, &mut whole_mid] {
        s.open_sequence(1, 32).unwrap();
    }
    for m in &mut members {
        m.open_sequence(1, 32).unwrap();
    }
    let last = common::REFERENCE_ARGMAX[10];
    for (what, step) in [("prompt", &common::REFERENCE_IDS[..]), ("decode step", &[last][..])] {
        let h = hidden(first.forward(1, ShardInput::Tokens(step), HeadOutput::ArgmaxLast).unwrap());
        let want = hidden(whole_mid.forward(1, ShardInput::Hidden(&h), HeadOutput::ArgmaxLast).unwrap());
        let outs = lockstep(&mut members, |shard, reduce| {
            shard.forward_reduce(1, ShardInput::Hidden(&h), HeadOutput::ArgmaxLast, reduce).map(hidden)
        });
        let (got, rounds) = same_on_every_member(outs);
        assert_eq!(rounds, 20);
        check_hidden(&format!("wgpu middle 3-way, {what}"), &got, &want, cfg.dim);
    }
    for m in &members {
        assert_eq!(m.sequence_len(1).unwrap(), 12);
    }
}

/// A member alone (plain `forward`, nothing added to its partial sums) is not the model: the reduction is what
/// the matching tests above depend on, on both backends.
#[test]
fn a_partial_shard_needs_the_reduction() {
    let (g, cfg) = common::smollm2();
    let spec = ShardSpec::whole(30);
    let (m, c) = &member_models(&g, &cfg, spec, &TWO_WAY[..1])[0];
    let ctx = GpuContext::new().unwrap();
    let mut gpu = GpuShard::load(ctx, m, c, spec, GpuOptions::default()).unwrap();
    gpu.open_sequence(1, 32).unwrap();
    let got = tokens(gpu.forward(1, ShardInput::Tokens(&common::REFERENCE_IDS), HeadOutput::ArgmaxAll).unwrap());
    println!("wgpu member 0 alone: {got:?}");
    assert_ne!(got, common::REFERENCE_ARGMAX);

    // CPU: three positions through the layers, against the unsliced hidden states.
    let body = ShardSpec { layer_start: 0, layer_end: 30, embed: true, head: false };
    let prefix = ShardInput::Tokens(&common::REFERENCE_IDS[..3]);
    let mut whole = ReferenceShard::load(&g, &cfg, body).unwrap();
    whole.open_sequence(1, 8).unwrap();
    let want = hidden(whole.forward(1, prefix, HeadOutput::ArgmaxAll).unwrap());
    let (m, c) = &member_models(&g, &cfg, body, &TWO_WAY[..1])[0];
    let mut cpu = ReferenceShard::load(m, c, body).unwrap();
    cpu.open_sequence(1, 8).unwrap();
    let got = hidden(cpu.forward(1, prefix, HeadOutput::ArgmaxAll).unwrap());
    let (diff, scale) = max_diff(&got, &want);
    println!("cpu member 0 alone: max abs diff {diff:.3e} (largest |hidden| {scale:.1})");
    assert!(diff > 0.1 * scale, "a lone member's hidden states should be far from the model's");
}

/// Slices that do not fit the model or its blocks are refused when the stage is cut, and a slice the wgpu
/// kernels cannot run (an output projection input of 16 values) is refused when it is loaded, with the reason.
#[test]
fn bad_slices_are_refused_clearly() {
    let (g, cfg) = common::smollm2();
    let spec = ShardSpec::whole(30);
    let err = |slice| stage_image(&g, &cfg, spec, Some(slice)).expect_err("refused").to_string();
    let e = err(LayerSlice { kv_heads: (0, 1), ffn: (0, 100), q_heads: None });
    assert!(e.contains("block boundaries"), "{e}");
    let e = err(LayerSlice { kv_heads: (2, 4), ffn: (0, 512), q_heads: None });
    assert!(e.contains("kv heads 2..4 do not fit"), "{e}");

    // A tiny F32 model with heads of 16: one KV head (and its one query head) is 16 columns of attn_output.
    let tiny = parse_bytes(&tiny_model()).unwrap();
    let tiny_cfg = ModelConfig::from_gguf(&tiny).unwrap();
    let spec = ShardSpec::whole(1);
    let img = stage_image(&tiny, &tiny_cfg, spec, Some(LayerSlice { kv_heads: (0, 1), ffn: (0, 32), q_heads: None }))
        .unwrap();
    let m = parse_bytes(&img.writer().to_bytes().unwrap()).unwrap();
    let c = ModelConfig::from_gguf(&m).unwrap();
    let ctx = GpuContext::new().unwrap();
    let e = GpuShard::load(ctx, &m, &c, spec, GpuOptions::default()).err().expect("refused").to_string();
    println!("{e}");
    assert!(e.contains("unsupported tensor-parallel slice") && e.contains("output projection"), "{e}");
    let e = ReferenceShard::load(&m, &c, spec).err().expect("refused").to_string();
    assert!(e.contains("not a multiple of 32"), "{e}");
}

/// One layer, dim 64, 4 heads / 4 KV heads of 16, FFN 64, vocab 40, all F32.
fn tiny_model() -> Vec<u8> {
    let (d, hd, nh, f, v) = (64u64, 16u64, 4u64, 64u64, 40u64);
    let mut w = GgufWriter::new()
        .kv("general.architecture", Value::Str("llama".into()))
        .kv("llama.block_count", Value::U32(1))
        .kv("llama.embedding_length", Value::U32(d as u32))
        .kv("llama.attention.head_count", Value::U32(nh as u32))
        .kv("llama.attention.head_count_kv", Value::U32(nh as u32))
        .kv("llama.feed_forward_length", Value::U32(f as u32))
        .kv("llama.context_length", Value::U32(64))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    let mat = |rows: u64, cols: u64| -> Vec<u8> {
        (0..rows * cols).flat_map(|i| (((i * 37) % 101) as f32 / 101.0 - 0.5).to_le_bytes()).collect()
    };
    w = w
        .tensor("token_embd.weight", &[d, v], GgmlType::F32, mat(v, d))
        .tensor("blk.0.attn_norm.weight", &[d], GgmlType::F32, mat(1, d))
        .tensor("blk.0.attn_q.weight", &[d, nh * hd], GgmlType::F32, mat(nh * hd, d))
        .tensor("blk.0.attn_k.weight", &[d, nh * hd], GgmlType::F32, mat(nh * hd, d))
        .tensor("blk.0.attn_v.weight", &[d, nh * hd], GgmlType::F32, mat(nh * hd, d))
        .tensor("blk.0.attn_output.weight", &[nh * hd, d], GgmlType::F32, mat(d, nh * hd))
        .tensor("blk.0.ffn_norm.weight", &[d], GgmlType::F32, mat(1, d))
        .tensor("blk.0.ffn_gate.weight", &[d, f], GgmlType::F32, mat(f, d))
        .tensor("blk.0.ffn_up.weight", &[d, f], GgmlType::F32, mat(f, d))
        .tensor("blk.0.ffn_down.weight", &[f, d], GgmlType::F32, mat(d, f))
        .tensor("output_norm.weight", &[d], GgmlType::F32, mat(1, d));
    w.to_bytes().unwrap()
}
