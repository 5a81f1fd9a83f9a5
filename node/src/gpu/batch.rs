//! The steps of a [`GpuShard`]: the next rows of one sequence, or of several (continuous batching), in one
//! submit. The rows of all sequences of a step lie one after the other in the activation buffers, so every matmul
//! runs once over all of them (one read of the weights for the batch); each sequence's RoPE + KV write and
//! attention run over its own rows, cache and positions ([`GpuSeq::set_rows`]). The head computes only the rows
//! someone wants logits of (a sequence's last row, or every row for a prompt check): they are copied out of the
//! residual stream into rows `0..k` of `xh`, and the head and argmax run over those `k` rows.
//!
//! A row's result does not depend on the batch: the matmul kernels compute each (row, output) the same way
//! whatever the other rows are, and each attention workgroup reads one row of one sequence.

use std::ops::Range;

use crate::shard::{
    check_distinct, check_input, normed_sum, HeadOutput, Reducer, SeqId, ShardError, ShardInput, ShardOutput, Step,
};

use super::dispatch::{StepDims, StepParams};
use super::kv::GpuSeq;
use super::shard::{GpuShard, HEAD_ROWS};

/// One sequence's rows in a step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seg {
    pub(super) seq: SeqId,
    /// Positions the sequence holds before the step.
    pub(super) pos0: usize,
    /// The sequence's first row among the step's rows.
    pub(super) row0: usize,
    pub(super) n: usize,
    /// What the head computes for these rows (`None`: nothing, e.g. a prompt chunk that is not the last).
    pub(super) want: Option<HeadOutput>,
}

impl Seg {
    /// Rows whose logits the head computes.
    pub(super) fn head_rows(&self) -> Range<usize> {
        let end = self.row0 + self.n;
        match self.want {
            Some(HeadOutput::ArgmaxAll) => self.row0..end,
            Some(HeadOutput::ArgmaxLast | HeadOutput::LogitsLast) => end - 1..end,
            Some(HeadOutput::HiddenSum) | None => 0..0,
        }
    }
}

/// What one sequence's rows of a step give back.
#[derive(Debug, Default)]
pub(super) struct SegOut {
    /// `(n, dim)`: the residual stream after the shard's layers (a shard without the head; embeddings).
    pub(super) hidden: Vec<f32>,
    /// Greedy token of each head row.
    pub(super) tokens: Vec<u32>,
    /// Logits of the last row (`LogitsLast`).
    pub(super) logits: Vec<f32>,
}

impl SegOut {
    /// Appends the output of the sequence's next step (a long input runs in several).
    fn extend(&mut self, next: SegOut) {
        self.hidden.extend(next.hidden);
        self.tokens.extend(next.tokens);
        if !next.logits.is_empty() {
            self.logits = next.logits;
        }
    }
}

/// Bytes read back from a step, split by what they hold.
pub(super) struct Readback {
    pub(super) hidden: Vec<f32>,
    pub(super) tokens: Vec<u32>,
    pub(super) logits: Vec<f32>,
}

impl GpuShard {
    /// Runs `segs` (rows laid out one sequence after another; `input` holds all of them in that order) in one
    /// step and counts the rows as written: each sequence's output.
    pub(super) fn run_rows(
        &mut self,
        segs: &[Seg],
        input: ShardInput<'_>,
        reduce: &mut dyn Reducer,
    ) -> Result<Vec<SegOut>, ShardError> {
        for s in segs {
            self.seqs.get(s.seq)?.kv.set_rows(&self.ctx.queue, s.n, s.pos0, s.row0);
        }
        let read =
            if self.cfg.partial_layers { self.run_partial(segs, input, reduce)? } else { self.run(segs, input)? };
        for s in segs {
            self.advance(s.seq, s.n)?;
        }
        Ok(self.split(segs, read))
    }

    /// A step of whole layers: one submit (embedding, layers, the head over the gathered rows), one readback.
    fn run(&self, segs: &[Seg], input: ShardInput<'_>) -> Result<Readback, ShardError> {
        let total = segs.iter().map(|s| s.n).sum::<usize>();
        let head_rows: Vec<usize> = segs.iter().flat_map(Seg::head_rows).collect();
        let dims = self.begin_rows(total, head_rows.len());
        match input {
            ShardInput::Tokens(t) => self.ctx.queue.write_buffer(&self.act.tokens, 0, bytemuck::cast_slice(t)),
            ShardInput::Hidden(h) => self.ctx.queue.write_buffer(&self.act.x, 0, bytemuck::cast_slice(h)),
        }
        let kvs = self.kvs(segs)?;
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("layers"), timestamp_writes: None });
            if let (ShardInput::Tokens(_), Some(embed)) = (input, &self.embed) {
                embed.record(&mut pass, dims);
            }
            for (l, layer) in self.layers.iter().enumerate() {
                layer.qkv.iter().for_each(|d| d.record(&mut pass, dims));
                self.record_attention(&mut pass, l, segs, &kvs, dims);
                let rest = layer.o.iter().chain(&layer.post_attn).chain(&layer.gate_up).chain(&layer.down);
                rest.chain(&layer.post_ffn).for_each(|d| d.record(&mut pass, dims));
            }
        }
        let hidden = segs.iter().any(|s| self.wants_hidden(s));
        let mut reads = Vec::new();
        if hidden {
            reads.push((&self.act.x, (total * self.cfg.dim * 4) as u64));
        }
        let row = (self.cfg.dim * 4) as u64;
        for (i, &r) in head_rows.iter().enumerate() {
            enc.copy_buffer_to_buffer(&self.act.x, r as u64 * row, &self.act.xh, i as u64 * row, row);
        }
        self.record_head(&mut enc, segs, dims, &mut reads);
        let bytes = self.finish(enc, &reads)?;
        Ok(self.readback(&bytes, if hidden { total } else { 0 }, head_rows.len()))
    }

    /// The KV state of each sequence of the step.
    pub(super) fn kvs(&self, segs: &[Seg]) -> Result<Vec<&GpuSeq>, ShardError> {
        segs.iter().map(|s| Ok(&self.seqs.get(s.seq)?.kv)).collect()
    }

    /// Layer `l`'s RoPE + KV write and attention of each sequence, over its own rows.
    pub(super) fn record_attention(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        l: usize,
        segs: &[Seg],
        kvs: &[&GpuSeq],
        dims: StepDims,
    ) {
        for (s, kv) in segs.iter().zip(kvs) {
            let own = StepDims { n_tok: s.n as u32, ..dims };
            kv.rope[l].record(pass, own);
            kv.attention[l].record(pass, own);
        }
    }

    /// Whether the step reads back `s`'s residual stream.
    fn wants_hidden(&self, s: &Seg) -> bool {
        !self.spec.head || s.want == Some(HeadOutput::HiddenSum)
    }

    /// Records the head over the rows gathered in `xh` (when any step wants logits) and what to read back.
    pub(super) fn record_head<'a>(
        &'a self,
        enc: &mut wgpu::CommandEncoder,
        segs: &[Seg],
        dims: StepDims,
        reads: &mut Vec<(&'a wgpu::Buffer, u64)>,
    ) {
        if dims.head_n == 0 {
            return;
        }
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("head"), timestamp_writes: None });
            self.head.iter().for_each(|d| d.record(&mut pass, dims));
        }
        reads.push((&self.act.argmax, dims.head_n as u64 * 4));
        if segs.iter().any(|s| s.want == Some(HeadOutput::LogitsLast)) {
            reads.push((&self.act.logits, dims.head_n as u64 * self.cfg.vocab as u64 * 4));
        }
    }

    /// Writes the step's parameters (`n` rows, the head over `head_n` gathered rows) and returns the sizes its
    /// dispatches need.
    pub(super) fn begin_rows(&self, n: usize, head_n: usize) -> StepDims {
        let params = StepParams { n_tok: n as u32, pos0: 0, head_n: head_n as u32, head_row0: 0 };
        self.ctx.queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&params));
        StepDims {
            n_tok: n as u32,
            head_n: head_n as u32,
            head_row0: 0,
            align: self.ctx.limits.min_uniform_buffer_offset_alignment.max(16),
        }
    }

    /// Copies `reads` one after another into the staging buffer, submits `enc` and waits: the bytes read.
    pub(super) fn finish(
        &self,
        mut enc: wgpu::CommandEncoder,
        reads: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<u8>, ShardError> {
        let mut off = 0;
        for &(src, bytes) in reads {
            enc.copy_buffer_to_buffer(src, 0, &self.act.staging, off, bytes);
            off += bytes;
        }
        self.ctx.submit(enc);
        if off == 0 {
            self.ctx.wait()?;
            self.ctx.check()?;
            return Ok(Vec::new());
        }
        self.ctx.read_back(&self.act.staging, off)
    }

    /// Splits what a step read back: `hidden_rows` rows of the residual stream, then `head_n` argmax tokens, then
    /// (if any) `head_n` rows of logits.
    pub(super) fn readback(&self, bytes: &[u8], hidden_rows: usize, head_n: usize) -> Readback {
        let (hidden, rest) = bytes.split_at(hidden_rows * self.cfg.dim * 4);
        let (tokens, logits) = rest.split_at((head_n * 4).min(rest.len()));
        Readback {
            hidden: bytemuck::pod_collect_to_vec(hidden),
            tokens: bytemuck::pod_collect_to_vec(tokens),
            logits: bytemuck::pod_collect_to_vec(logits),
        }
    }

    /// Each sequence's part of a step's results.
    fn split(&self, segs: &[Seg], r: Readback) -> Vec<SegOut> {
        let (dim, vocab) = (self.cfg.dim, self.cfg.vocab);
        let mut head = 0;
        segs.iter()
            .map(|s| {
                let k = s.head_rows().len();
                let out = SegOut {
                    hidden: match self.wants_hidden(s) {
                        true => r.hidden[s.row0 * dim..(s.row0 + s.n) * dim].to_vec(),
                        false => Vec::new(),
                    },
                    tokens: r.tokens[head..head + k].to_vec(),
                    logits: match s.want {
                        Some(HeadOutput::LogitsLast) => r.logits[head * vocab..(head + 1) * vocab].to_vec(),
                        _ => Vec::new(),
                    },
                };
                head += k;
                out
            })
            .collect()
    }

    /// What [`crate::shard::Shard::forward_reduce`] returns for `want`, from the outputs of the sequence's steps.
    fn output(&self, want: HeadOutput, out: SegOut) -> ShardOutput {
        if !self.spec.head {
            ShardOutput::Hidden(out.hidden)
        } else if want == HeadOutput::HiddenSum {
            let norm = self.output_norm.as_ref().expect("head shard");
            ShardOutput::HiddenSum(normed_sum(&out.hidden, norm, self.cfg.rms_eps))
        } else if want == HeadOutput::LogitsLast {
            ShardOutput::Logits(out.logits)
        } else {
            ShardOutput::Tokens(out.tokens)
        }
    }

    /// Head rows one step may compute (the logits buffer's rows).
    fn head_capacity(&self) -> usize {
        (HEAD_ROWS as usize).min(self.opts.max_step_tokens.max(1))
    }

    /// [`crate::shard::Shard::forward_reduce`]: the sequence's rows in steps of at most `max_step_tokens` (the
    /// head computes only the last step's last row, unless every position's argmax is wanted).
    pub(super) fn forward_one(
        &mut self,
        seq: SeqId,
        input: ShardInput<'_>,
        want: HeadOutput,
        reduce: &mut dyn Reducer,
    ) -> Result<ShardOutput, ShardError> {
        let n = check_input(&self.spec, &self.cfg, &input)?;
        self.seqs.with_room(seq, n)?;
        let dim = self.cfg.dim;
        let mut step = self.opts.max_step_tokens.max(1);
        if want == HeadOutput::ArgmaxAll {
            step = step.min(self.head_capacity());
        }
        let mut out = SegOut::default();
        let mut start = 0;
        while start < n {
            let end = (start + step).min(n);
            let part = match input {
                ShardInput::Tokens(t) => ShardInput::Tokens(&t[start..end]),
                ShardInput::Hidden(h) => ShardInput::Hidden(&h[start * dim..end * dim]),
            };
            // Intermediate steps of a last-position request skip the head entirely.
            let head = match want {
                _ if !self.spec.head => None,
                HeadOutput::ArgmaxAll | HeadOutput::HiddenSum => Some(want),
                _ if end == n => Some(want),
                _ => None,
            };
            let pos0 = self.seqs.get(seq)?.len;
            let seg = Seg { seq, pos0, row0: 0, n: end - start, want: head };
            out.extend(self.run_rows(&[seg], part, reduce)?.pop().expect("one sequence"));
            start = end;
        }
        Ok(self.output(want, out))
    }

    /// [`crate::shard::Shard::forward_batch`]: checks every step, then runs the steps that fit one submit
    /// together, as many per submit as the activation buffers (`max_step_tokens` rows) and the head (`HEAD_ROWS`
    /// rows) hold. A step longer than that (a prompt not sent in chunks, a whole-prompt argmax check) runs on its
    /// own.
    pub(super) fn forward_many(
        &mut self,
        steps: &[Step<'_>],
        reduce: &mut dyn Reducer,
    ) -> Result<Vec<ShardOutput>, ShardError> {
        check_distinct(steps)?;
        let mut lens = Vec::with_capacity(steps.len());
        for s in steps {
            let n = check_input(&self.spec, &self.cfg, &s.input)?;
            self.seqs.with_room(s.seq, n)?;
            lens.push(n);
        }
        let (max_rows, max_head) = (self.opts.max_step_tokens.max(1), self.head_capacity());
        let has_head = self.spec.head;
        let head_of = |s: &Step, n: usize| match s.want {
            _ if !has_head => 0,
            HeadOutput::ArgmaxAll => n,
            HeadOutput::HiddenSum => 0,
            HeadOutput::ArgmaxLast | HeadOutput::LogitsLast => 1,
        };
        let mut out: Vec<Option<ShardOutput>> = vec![None; steps.len()];
        let mut group: Vec<usize> = Vec::new();
        let (mut rows, mut head) = (0, 0);
        for (i, (s, &n)) in steps.iter().zip(&lens).enumerate() {
            let h = head_of(s, n);
            if n > max_rows || h > max_head {
                out[i] = Some(self.forward_one(s.seq, s.input, s.want, reduce)?);
                continue;
            }
            if rows + n > max_rows || head + h > max_head {
                self.run_group(steps, &std::mem::take(&mut group), &mut out, reduce)?;
                (rows, head) = (0, 0);
            }
            group.push(i);
            (rows, head) = (rows + n, head + h);
        }
        if !group.is_empty() {
            self.run_group(steps, &group, &mut out, reduce)?;
        }
        Ok(out.into_iter().map(|o| o.expect("every step ran")).collect())
    }

    /// Runs `steps[i]` for each `i` in `group` as one step; puts each output in `out[i]`.
    fn run_group(
        &mut self,
        steps: &[Step<'_>],
        group: &[usize],
        out: &mut [Option<ShardOutput>],
        reduce: &mut dyn Reducer,
    ) -> Result<(), ShardError> {
        let (mut segs, mut tokens, mut hidden) = (Vec::new(), Vec::new(), Vec::new());
        let mut row0 = 0;
        for &i in group {
            let s = &steps[i];
            let n = match s.input {
                ShardInput::Tokens(t) => {
                    tokens.extend_from_slice(t);
                    t.len()
                }
                ShardInput::Hidden(h) => {
                    hidden.extend_from_slice(h);
                    h.len() / self.cfg.dim
                }
            };
            let want = self.spec.head.then_some(s.want);
            segs.push(Seg { seq: s.seq, pos0: self.seqs.get(s.seq)?.len, row0, n, want });
            row0 += n;
        }
        let input = if self.spec.embed { ShardInput::Tokens(&tokens) } else { ShardInput::Hidden(&hidden) };
        let outs = self.run_rows(&segs, input, reduce)?;
        for (&i, o) in group.iter().zip(outs) {
            out[i] = Some(self.output(steps[i].want, o));
        }
        Ok(())
    }
}
