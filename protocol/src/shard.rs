//! What a shard is: a contiguous range of transformer layers of one model, optionally with the token embedding
//! (first shard) and the final norm + output head (last shard).

use serde::{Deserialize, Serialize};

/// A contiguous piece of a model that one node executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardSpec {
    /// First layer (inclusive).
    pub layer_start: u32,
    /// Last layer (exclusive).
    pub layer_end: u32,
    /// The shard starts from token ids (owns the embedding table).
    pub embed: bool,
    /// The shard ends with the final norm and output head (produces logits / tokens).
    pub head: bool,
}

impl ShardSpec {
    /// The whole model as one shard.
    pub fn whole(n_layers: u32) -> ShardSpec {
        ShardSpec { layer_start: 0, layer_end: n_layers, embed: true, head: true }
    }

    /// Splits `0..n_layers` at the given boundaries, e.g. `split(30, &[10, 20])` gives three shards.
    pub fn split(n_layers: u32, cuts: &[u32]) -> Vec<ShardSpec> {
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < n_layers));
        bounds.push(n_layers);
        bounds.dedup();
        let last = bounds.len() - 2;
        bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| ShardSpec { layer_start: w[0], layer_end: w[1], embed: i == 0, head: i == last })
            .collect()
    }

    pub fn n_layers(&self) -> u32 {
        self.layer_end.saturating_sub(self.layer_start)
    }

    /// Checks the shard against a model with `n_layers` layers.
    pub fn validate(&self, n_layers: u32) -> Result<(), String> {
        if self.layer_start > self.layer_end || self.layer_end > n_layers {
            return Err(format!(
                "shard layers {}..{} do not fit a model with {n_layers} layers",
                self.layer_start, self.layer_end
            ));
        }
        if self.n_layers() == 0 && !self.embed && !self.head {
            return Err("shard has no layers, no embedding and no head".into());
        }
        Ok(())
    }
}

/// The part of every layer a member of a tensor-parallel stage holds: a range of whole key/value heads (with the
/// query heads that share them) and a range of FFN columns. `[start, end)` ranges.
///
/// A model with fewer key/value heads than members (gemma3 has one) splits query heads instead: `q_heads` is then
/// a range of query heads inside the single key/value head `kv_heads`, which every member holds whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerSlice {
    pub kv_heads: (u32, u32),
    pub ffn: (u32, u32),
    /// Query heads `[start, end)` (absolute), when they are split inside one key/value head; `None`: every query
    /// head of `kv_heads`.
    pub q_heads: Option<(u32, u32)>,
}

impl LayerSlice {
    /// Checks the slice against a model with `n_heads` query heads, `n_kv_heads` key/value heads and `ffn_dim`
    /// FFN columns, split in blocks of `ffn_block` columns.
    pub fn validate(&self, n_heads: u32, n_kv_heads: u32, ffn_dim: u32, ffn_block: u32) -> Result<(), String> {
        let (k0, k1) = self.kv_heads;
        let (f0, f1) = self.ffn;
        if k0 >= k1 || k1 > n_kv_heads {
            return Err(format!("kv heads {k0}..{k1} do not fit a model with {n_kv_heads}"));
        }
        if let Some((q0, q1)) = self.q_heads {
            let group = n_heads / n_kv_heads.max(1);
            if n_kv_heads == 0
                || !n_heads.is_multiple_of(n_kv_heads)
                || k1 - k0 != 1
                || q0 >= q1
                || q0 < k0 * group
                || q1 > k1 * group
            {
                return Err(format!(
                    "query heads {q0}..{q1} are not inside kv head {k0} of a model with {n_heads} / {n_kv_heads} heads"
                ));
            }
        }
        if f0 >= f1 || f1 > ffn_dim {
            return Err(format!("ffn columns {f0}..{f1} do not fit a model with {ffn_dim}"));
        }
        if ffn_block == 0 || f0 % ffn_block != 0 || (f1 % ffn_block != 0 && f1 != ffn_dim) {
            return Err(format!("ffn columns {f0}..{f1} are not on {ffn_block}-column block boundaries"));
        }
        Ok(())
    }
}

impl std::fmt::Display for LayerSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kv heads {}..{}", self.kv_heads.0, self.kv_heads.1)?;
        if let Some((q0, q1)) = self.q_heads {
            write!(f, " (query heads {q0}..{q1})")?;
        }
        write!(f, ", ffn {}..{}", self.ffn.0, self.ffn.1)
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layers {}..{}", self.layer_start, self.layer_end)?;
        if self.embed {
            write!(f, " +embed")?;
        }
        if self.head {
            write!(f, " +head")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_all_layers_once() {
        let s = ShardSpec::split(30, &[10, 20]);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].layer_start, s[0].layer_end, s[0].embed, s[0].head), (0, 10, true, false));
        assert_eq!((s[1].layer_start, s[1].layer_end, s[1].embed, s[1].head), (10, 20, false, false));
        assert_eq!((s[2].layer_start, s[2].layer_end, s[2].embed, s[2].head), (20, 30, false, true));
        assert_eq!(ShardSpec::split(30, &[]), vec![ShardSpec::whole(30)]);
    }

    #[test]
    fn validate_rejects_out_of_range() {
        assert!(ShardSpec { layer_start: 5, layer_end: 31, embed: false, head: true }.validate(30).is_err());
        assert!(ShardSpec { layer_start: 6, layer_end: 5, embed: false, head: false }.validate(30).is_err());
        assert!(ShardSpec::whole(30).validate(30).is_ok());
    }
}
