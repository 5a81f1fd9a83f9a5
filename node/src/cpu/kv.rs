//! The KV cache of one sequence in host memory (the cpu and reference backends): per layer, K and V rows of
//! `kv_dim` values, f16 on the cpu backend (as llama.cpp's default cache: half the memory and half the reads of
//! attention) and f32 on the reference.
//!
//! A global layer holds every position of the sequence (`capacity` rows). A sliding-window layer (gemma3's local
//! layers) only ever reads the last `window` positions, so it holds a run of `window - 1 + STEP_SLACK` positions
//! starting at `base`: when a step would write past the end, the `window - 1` positions its first row still reads
//! move to the front (one copy of the window every `STEP_SLACK` tokens). Its memory is bounded by the window, not
//! by the context. A step of more than `STEP_SLACK + 1` tokens grows the run to fit it (the serving path sends
//! prompts in chunks of at most that many tokens).

use crate::shard::ShardError;

/// Positions a sliding-window layer holds beyond the window: the largest step that needs no growth is one more.
/// The same as the coordinator's default prefill chunk; its planner counts a layer's positions with [`rows`].
pub const STEP_SLACK: usize = 256;

struct LayerKv<T> {
    k: Vec<T>,
    v: Vec<T>,
    /// The position of the first row.
    base: usize,
    window: Option<usize>,
}

pub struct SeqKv<T = f32> {
    layers: Vec<LayerKv<T>>,
    kv_dim: usize,
}

/// `n` zeros, or a clear error when the memory is not there (a KV cache is the one large allocation a request
/// sizes).
fn zeros<T: Copy + Default>(n: usize) -> Result<Vec<T>, ShardError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| ShardError::BadInput(format!("out of memory for a KV cache of {n} values")))?;
    v.resize(n, T::default());
    Ok(v)
}

/// Rows a layer with `window` holds for a sequence of `capacity` positions.
pub fn rows(window: Option<usize>, capacity: usize) -> usize {
    window.map_or(capacity, |w| capacity.min(w.saturating_sub(1) + STEP_SLACK))
}

/// The first position the next row after `len` positions reads on a layer with `window`.
pub fn first_read(window: Option<usize>, len: usize) -> usize {
    window.map_or(0, |w| (len + 1).saturating_sub(w))
}

impl<T: Copy + Default> LayerKv<T> {
    fn rows(&self, kv_dim: usize) -> usize {
        self.k.len() / kv_dim
    }

    /// Moves positions `keep .. pos0` to the front of `rows` rows (new buffers when the size changes).
    fn rebase(&mut self, keep: usize, pos0: usize, rows: usize, kv_dim: usize) -> Result<(), ShardError> {
        let (from, to) = ((keep - self.base) * kv_dim, (pos0 - self.base) * kv_dim);
        if rows == self.rows(kv_dim) {
            self.k.copy_within(from..to, 0);
            self.v.copy_within(from..to, 0);
        } else {
            let (mut k, mut v) = (zeros(rows * kv_dim)?, zeros(rows * kv_dim)?);
            k[..to - from].copy_from_slice(&self.k[from..to]);
            v[..to - from].copy_from_slice(&self.v[from..to]);
            (self.k, self.v) = (k, v);
        }
        self.base = keep;
        Ok(())
    }
}

impl<T: Copy + Default> SeqKv<T> {
    /// Zeroed K and V for a sequence of `capacity` positions, one layer per entry of `windows`; a clear error when
    /// the memory is not there (the capacity is bounded by the model's context, checked before).
    pub fn alloc(
        windows: impl Iterator<Item = Option<usize>>,
        capacity: usize,
        kv_dim: usize,
    ) -> Result<SeqKv<T>, ShardError> {
        let layers = windows
            .map(|window| {
                let n = rows(window, capacity) * kv_dim;
                Ok(LayerKv { k: zeros(n)?, v: zeros(n)?, base: 0, window })
            })
            .collect::<Result<Vec<_>, ShardError>>()
            .map_err(|_| ShardError::BadInput(format!("out of memory for a KV cache of {capacity} positions")))?;
        Ok(SeqKv { layers, kv_dim })
    }

    /// Makes every layer ready to take positions `pos0 .. pos0 + n` while keeping the positions their rows read.
    /// `pos0` is the sequence's length: the rows from `pos0` on are free.
    pub fn make_room(&mut self, pos0: usize, n: usize) -> Result<(), ShardError> {
        let d = self.kv_dim;
        for l in self.layers.iter_mut().filter(|l| l.window.is_some()) {
            let (keep, end, rows) = (first_read(l.window, pos0), pos0 + n, l.rows(d));
            if keep < l.base {
                return Err(ShardError::BadInput(format!(
                    "positions {keep}..{} of a sliding-window layer are no longer held",
                    l.base
                )));
            }
            if end - l.base > rows {
                l.rebase(keep, pos0, rows.max(end - keep), d)?;
            }
        }
        Ok(())
    }

    /// K and V of position `pos` in layer `li` (made room for).
    pub fn row_mut(&mut self, li: usize, pos: usize) -> (&mut [T], &mut [T]) {
        let l = &mut self.layers[li];
        let at = (pos - l.base) * self.kv_dim;
        (&mut l.k[at..at + self.kv_dim], &mut l.v[at..at + self.kv_dim])
    }

    /// Raw pointers to the K and V rows (`kv_dim` elements each) of position `pos` in layer `li` (made room
    /// for), for writers on several threads at once: taken through `Vec::as_mut_ptr`, so one position's pointers
    /// stay valid while another's are taken (no reference to the whole buffer is made), until the cache is
    /// resized.
    pub fn row_ptrs(&mut self, li: usize, pos: usize) -> (*mut T, *mut T) {
        let (l, d) = (&mut self.layers[li], self.kv_dim);
        let at = (pos - l.base) * d;
        assert!(at + d <= l.k.len() && at + d <= l.v.len(), "position {pos} has no room in layer {li}");
        // SAFETY: in bounds (checked above).
        unsafe { (l.k.as_mut_ptr().add(at), l.v.as_mut_ptr().add(at)) }
    }

    /// Layer `li`'s K and V and the position of their first row.
    pub fn layer(&self, li: usize) -> (&[T], &[T], usize) {
        let l = &self.layers[li];
        (&l.k, &l.v, l.base)
    }

    /// Checks that the sequence can continue after its first `len` positions (a sliding-window layer may have
    /// dropped positions the next row would read); back at zero it starts over.
    pub fn rewind(&mut self, len: usize) -> Result<(), ShardError> {
        for l in &mut self.layers {
            if len == 0 {
                l.base = 0;
            } else if first_read(l.window, len) < l.base {
                return Err(ShardError::BadInput(format!(
                    "cannot go back to {len} positions: a sliding-window layer no longer holds those before {}",
                    l.base
                )));
            }
        }
        Ok(())
    }

    /// Copies what the next row after `len` positions reads into `to` (every position of a global layer, the last
    /// `window - 1` of a sliding-window layer), for [`crate::shard::Shard::fork`]. `to` is empty and holds `len`.
    pub fn copy_prefix(&self, to: &mut SeqKv<T>, len: usize) -> Result<(), ShardError> {
        let d = self.kv_dim;
        if let Some(f) = self.layers.iter().find(|f| first_read(f.window, len) < f.base) {
            return Err(ShardError::BadInput(format!(
                "cannot fork {len} positions: a sliding-window layer no longer holds those before {}",
                f.base
            )));
        }
        for (f, t) in self.layers.iter().zip(&mut to.layers) {
            let lo = first_read(f.window, len);
            let (src, n) = ((lo - f.base) * d, (len - lo) * d);
            t.k[..n].copy_from_slice(&f.k[src..src + n]);
            t.v[..n].copy_from_slice(&f.v[src..src + n]);
            t.base = lo;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes position `p`'s value `p` in every layer, one step of `n` positions at a time.
    fn write(kv: &mut SeqKv, pos0: usize, n: usize) {
        kv.make_room(pos0, n).unwrap();
        for li in 0..kv.layers.len() {
            for p in pos0..pos0 + n {
                let (k, v) = kv.row_mut(li, p);
                (k[0], v[0]) = (p as f32, -(p as f32));
            }
        }
    }

    /// What each row of the step just written reads is there, in order, on every layer.
    fn check(kv: &SeqKv, pos0: usize, n: usize) {
        for (li, l) in kv.layers.iter().enumerate() {
            let (k, v, base) = kv.layer(li);
            for last in pos0..pos0 + n {
                let first = first_read(l.window, last);
                let want: Vec<f32> = (first..=last).map(|p| p as f32).collect();
                assert_eq!(&k[first - base..=last - base], &want[..], "layer {li} row {last}");
                assert_eq!(v[last - base], -(last as f32));
            }
        }
    }

    #[test]
    fn a_window_layer_keeps_what_its_rows_read_in_bounded_memory() {
        let (w, cap) = (10, 2000);
        let mut kv = SeqKv::alloc([None, Some(w)].into_iter(), cap, 1).unwrap();
        assert_eq!((kv.layers[0].k.len(), kv.layers[1].k.len()), (cap, w - 1 + STEP_SLACK));
        let mut pos = 0;
        for n in [1, 200, 64, 1, 1, 7, 256, 3].into_iter().chain(std::iter::repeat_n(1, 600)) {
            write(&mut kv, pos, n);
            check(&kv, pos, n);
            pos += n;
        }
        assert_eq!(kv.layers[1].k.len(), w - 1 + STEP_SLACK, "no growth for steps up to the slack");
        write(&mut kv, pos, 400);
        check(&kv, pos, 400);
        assert_eq!(kv.layers[1].k.len(), w - 1 + 400, "grown to the step");
        pos += 400;

        // A fork or a rewind needs the window before its length.
        let mut to = SeqKv::alloc([None, Some(w)].into_iter(), cap, 1).unwrap();
        kv.copy_prefix(&mut to, pos - 3).unwrap();
        write(&mut to, pos - 3, 1);
        check(&to, pos - 3, 1);
        assert!(kv.copy_prefix(&mut to, 100).is_err());
        assert!(kv.rewind(100).is_err());
        kv.rewind(pos - 1).unwrap();
        kv.rewind(0).unwrap();
        write(&mut kv, 0, 5);
        check(&kv, 0, 5);
    }

    #[test]
    fn a_short_sequence_holds_no_more_than_its_capacity() {
        let kv = SeqKv::<f32>::alloc([Some(512), None].into_iter(), 64, 4).unwrap();
        assert_eq!((kv.layers[0].k.len(), kv.layers[1].v.len()), (64 * 4, 64 * 4));
        assert_eq!(rows(Some(512), 100_000), 511 + STEP_SLACK);
    }
}
