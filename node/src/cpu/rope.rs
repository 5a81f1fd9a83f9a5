//! Rotary position embedding for a step's rows: the sines and cosines come from a table of the rows' positions
//! ([`RopeTable`]), computed once per step and per set of frequencies, not once per layer (the same `sin_cos`
//! values, so the same bits).

use std::sync::Arc;

use crate::model::RopeStyle;

/// The sines and cosines of a step's rows at their positions, for each set of frequencies the layers use (one,
/// or two for models with sliding-window layers of their own base), filled as layers ask for them.
#[derive(Default)]
pub struct RopeTable {
    /// Each set of frequencies (the layers' shared vector) with its table: row after row, one `(sin, cos)` per
    /// frequency.
    sets: Vec<FreqTable>,
    pos: Vec<usize>,
}

impl RopeTable {
    /// Forgets the last step's tables; `pos` are this step's rows' positions.
    pub fn start(&mut self, pos: impl IntoIterator<Item = usize>) {
        self.sets.clear();
        self.pos.clear();
        self.pos.extend(pos);
    }

    /// Row `t`'s `(sin, cos)` of `pos(t) * f` for every frequency `f` of `freqs`; computed for all rows on the
    /// first call with these frequencies in the step.
    pub fn rows(&mut self, freqs: &Arc<Vec<f32>>) -> RopeRows<'_> {
        let i = match self.sets.iter().position(|(f, _)| Arc::ptr_eq(f, freqs)) {
            Some(i) => i,
            None => {
                let table =
                    self.pos.iter().flat_map(|&p| freqs.iter().map(move |f| (p as f32 * f).sin_cos())).collect();
                self.sets.push((freqs.clone(), table));
                self.sets.len() - 1
            }
        };
        RopeRows { table: &self.sets[i].1, per_row: freqs.len() }
    }
}

type FreqTable = (Arc<Vec<f32>>, Vec<(f32, f32)>);

/// One set of frequencies' table (see [`RopeTable::rows`]).
#[derive(Clone, Copy)]
pub struct RopeRows<'a> {
    table: &'a [(f32, f32)],
    per_row: usize,
}

impl RopeRows<'_> {
    /// Rotary embedding of row `t`'s queries and keys (heads of `hd`) at the row's position.
    pub fn apply(&self, t: usize, q: &mut [f32], k: &mut [f32], hd: usize, style: RopeStyle) {
        let half = hd / 2;
        let sc = &self.table[t * self.per_row..][..self.per_row];
        for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
            for (i, &(sin, cos)) in sc.iter().enumerate().take(half) {
                crate::reference::rotate_pair(head, i, style, sin, cos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table gives the rotation computed per row and per layer, bit for bit, for both styles and two sets
    /// of frequencies in one step.
    #[test]
    fn rope_table_is_the_per_row_rotation() {
        let hd = 8;
        let sets = [Arc::new(vec![1.0f32, 0.1, 0.01, 0.001]), Arc::new(vec![1.0f32, 0.5, 0.25, 0.125])];
        let pos = [0usize, 7, 300, 4095];
        let mut table = RopeTable::default();
        table.start(pos);
        for style in [RopeStyle::Adjacent, RopeStyle::Neox] {
            for freqs in &sets {
                let rows = table.rows(freqs);
                for (t, &p) in pos.iter().enumerate() {
                    let q0: Vec<f32> = (0..2 * hd).map(|i| i as f32 * 0.3 - 1.0 + t as f32).collect();
                    let k0: Vec<f32> = (0..hd).map(|i| 2.0 - i as f32 * 0.7).collect();
                    let (mut q, mut k) = (q0.clone(), k0.clone());
                    rows.apply(t, &mut q, &mut k, hd, style);
                    let (mut wq, mut wk) = (q0, k0);
                    for head in wq.chunks_exact_mut(hd).chain(wk.chunks_exact_mut(hd)) {
                        for (i, f) in freqs.iter().enumerate() {
                            let (sin, cos) = (p as f32 * f).sin_cos();
                            let (a, b) = match style {
                                RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                                RopeStyle::Neox => (i, i + hd / 2),
                            };
                            let (x0, x1) = (head[a], head[b]);
                            head[a] = x0 * cos - x1 * sin;
                            head[b] = x0 * sin + x1 * cos;
                        }
                    }
                    assert_eq!((q, k), (wq, wk), "row {t}, {style:?}");
                }
            }
        }
        assert_eq!(table.sets.len(), 2, "one table per set of frequencies");
    }
}
