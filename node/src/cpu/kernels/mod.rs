//! Dot-product kernels, one file per instruction set (as ggml-cpu lays them out), chosen at run time:
//! - `generic.rs`: portable Rust, on every machine; the path every other one is tested against.
//! - `avx2.rs`: AVX2 + FMA + F16C (x86-64 since 2013).
//! - `avx512.rs`: AVX-512 VNNI on 256-bit vectors.
//! - `neon.rs`: aarch64 NEON (every 64-bit ARM CPU).
//! - `dotprod.rs`: aarch64 NEON with the dot-product extension (ARMv8.2+: Pi 5, Jetson Orin, recent phones).
//!
//! The x86 files share their bodies through `x86.rs`, the ARM ones through `arm.rs`. [`Isa::detect`] picks the
//! best the CPU has; `EDGE_CPU_ISA=generic|avx2|avx512|neon|neon-dotprod` asks for a lower one (to compare them,
//! or to rule one out).

use half::f16;

use crate::quant::GgmlType;

pub mod generic;

#[cfg(target_arch = "aarch64")]
mod arm;

#[cfg(target_arch = "aarch64")]
mod arm_packed;

#[cfg(target_arch = "aarch64")]
pub mod neon;

#[cfg(target_arch = "aarch64")]
pub mod dotprod;

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "x86_64")]
mod x86_attend;

#[cfg(target_arch = "x86_64")]
mod x86_packed;

#[cfg(target_arch = "x86_64")]
mod x86_packed_k;

#[cfg(target_arch = "x86_64")]
mod x86_packed_wide;

#[cfg(target_arch = "x86_64")]
pub mod avx2;

#[cfg(target_arch = "x86_64")]
pub mod avx512;

/// A dot product of one weight row (GGML blocks) with one activation row (the weight type's
/// [`super::act::ActType`]) over `n` elements.
///
/// # Safety
/// The CPU supports the kernel's instruction set (guaranteed when it comes from [`Isa::dot`] of a detected
/// [`Isa`]), and both rows hold at least `n` elements.
pub type DotFn = unsafe fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// Four dot products at once: four weight rows `stride` bytes apart with one activation row (the matmul's inner
/// step; the rows' independent sums hide the instruction latencies and share the activation loads).
///
/// # Safety
/// As [`DotFn`], for the four rows.
pub type Dot4Fn = unsafe fn(n: usize, w: &[u8], stride: usize, a: &[u8]) -> [f32; 4];

/// A tile of dot products (prefill): `rows` weight rows `stride` bytes apart with `tokens` activation rows
/// `astride` bytes apart; `out` takes the `rows x tokens` sums row by row.
///
/// # Safety
/// As [`DotFn`], for every row of the tile.
pub type TileFn = unsafe fn(n: usize, w: &[u8], stride: usize, a: &[u8], astride: usize, out: &mut [f32]);

/// Eight interleaved rows (one group of [`super::repack`]'s layout) times `n` Q8_1 activation rows `astride`
/// bytes apart, all `cols` long: row `r` x token `t` goes to `out[t * ostride + r]` (prefill and decode alike).
///
/// # Safety
/// As [`DotFn`]; `out` points at `n` rows of `ostride` floats that no other thread touches at rows' first eight.
pub type PackedFn = unsafe fn(cols: usize, w: &[u8], a: &[u8], astride: usize, n: usize, out: *mut f32, ostride: usize);

/// A type's kernels in [`super::repack`]'s layout on one path: one group of eight rows, and (AVX-512 VNNI) two
/// groups side by side in 512-bit vectors, sixteen rows (`x86_packed_wide.rs`). Both give every row the same bits.
#[derive(Debug, Clone, Copy)]
pub struct Packed {
    pub one: PackedFn,
    pub two: Option<PackedFn>,
}

impl Packed {
    /// Groups `groups` of the packed weights `w` (`gbytes` bytes each) times `n` activation rows `astride` bytes
    /// apart: rows `8g..8g + 8` of group `g` to `out[t * ostride + 8g..]`, two groups a call where the path has a
    /// kernel for two.
    ///
    /// # Safety
    /// As [`PackedFn`] for each group; `out` points at row 0 of `n` rows of `ostride` floats.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn groups(
        &self,
        cols: usize,
        w: &[u8],
        gbytes: usize,
        groups: std::ops::Range<usize>,
        a: &[u8],
        astride: usize,
        n: usize,
        out: *mut f32,
        ostride: usize,
    ) {
        let mut g = groups.start;
        while g < groups.end {
            let two = self.two.filter(|_| g + 1 < groups.end);
            let (kernel, count) = two.map_or((self.one, 1), |k| (k, 2));
            // SAFETY: `count` whole groups of `w`; their rows of `out` are the caller's.
            unsafe { kernel(cols, &w[g * gbytes..(g + count) * gbytes], a, astride, n, out.add(8 * g), ostride) };
            g += count;
        }
    }
}

/// An instruction-set path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Generic,
    Avx2,
    Avx512Vnni,
    Neon,
    NeonDotprod,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neon-dotprod",
        }
    }

    /// Every path this CPU can run, the portable one first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Generic];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            if avx2 {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            v.push(Isa::Neon); // part of the aarch64 baseline
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                v.push(Isa::NeonDotprod);
            }
        }
        v
    }

    /// The best path this CPU runs, or the one `EDGE_CPU_ISA` names when the CPU has it.
    pub fn detect() -> Isa {
        let available = Isa::available();
        let best = *available.last().expect("generic is always available");
        match std::env::var("EDGE_CPU_ISA") {
            Ok(want) if !want.is_empty() => match available.iter().find(|i| i.name().starts_with(want.as_str())) {
                Some(&isa) => isa,
                None => {
                    tracing::warn!(
                        want,
                        best = best.name(),
                        "EDGE_CPU_ISA names a path this CPU lacks; using the best"
                    );
                    best
                }
            },
            _ => best,
        }
    }
}

/// The kernels of a path this CPU has: the only way to get one is to check (so its safe methods are sound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    isa: Isa,
}

impl Kernels {
    /// The best path (see [`Isa::detect`]).
    pub fn detect() -> Kernels {
        Kernels { isa: Isa::detect() }
    }

    /// The kernels of `isa`, if this CPU has it.
    pub fn new(isa: Isa) -> Option<Kernels> {
        Isa::available().contains(&isa).then_some(Kernels { isa })
    }

    pub fn isa(self) -> Isa {
        self.isa
    }

    /// The dot kernel for weights of type `ty` on this path (`None`: the type has no kernel). Calling it is
    /// sound when both rows hold `n` elements.
    pub fn dot(self, ty: GgmlType) -> Option<DotFn> {
        macro_rules! pick {
            ($m:ident) => {
                match ty {
                    GgmlType::Q4_0 => $m::dot_q4_0 as DotFn,
                    GgmlType::Q4_1 => $m::dot_q4_1,
                    GgmlType::Q5_0 => $m::dot_q5_0,
                    GgmlType::Q8_0 => $m::dot_q8_0,
                    GgmlType::Q4K => $m::dot_q4_k,
                    GgmlType::Q6K => $m::dot_q6_k,
                    GgmlType::F16 => $m::dot_f16,
                    GgmlType::F32 => $m::dot_f32,
                    _ => return None,
                }
            };
        }
        Some(match self.isa {
            Isa::Generic => pick!(generic),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pick!(avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => pick!(avx512),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pick!(neon),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => pick!(dotprod),
            #[allow(unreachable_patterns)]
            _ => pick!(generic),
        })
    }

    /// The four-row kernel for weights of type `ty` (`None`: this path has none; use [`Kernels::dot`] per row).
    pub fn dot4(self, ty: GgmlType) -> Option<Dot4Fn> {
        macro_rules! pick {
            ($m:ident) => {
                match ty {
                    GgmlType::Q4_0 => $m::dot4_q4_0 as Dot4Fn,
                    GgmlType::Q4_1 => $m::dot4_q4_1,
                    GgmlType::Q5_0 => $m::dot4_q5_0,
                    GgmlType::Q8_0 => $m::dot4_q8_0,
                    GgmlType::Q4K => $m::dot4_q4_k,
                    GgmlType::Q6K => $m::dot4_q6_k,
                    _ => return None,
                }
            };
        }
        Some(match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pick!(avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => pick!(avx512),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pick!(neon),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => pick!(dotprod),
            _ => return None,
        })
    }

    /// The kernels of weights of type `ty` repacked in [`super::repack`]'s layout (`None`: this path reads the
    /// type in GGML's own layout).
    pub fn packed(self, ty: GgmlType) -> Option<Packed> {
        macro_rules! pick {
            ($m:ident $(, $kty:ident => $k:ident)*) => {
                match ty {
                    GgmlType::Q4_0 => $m::gemm8_q4_0 as PackedFn,
                    GgmlType::Q4_1 => $m::gemm8_q4_1,
                    GgmlType::Q5_0 => $m::gemm8_q5_0,
                    GgmlType::Q8_0 => $m::gemm8_q8_0,
                    $(GgmlType::$kty => $m::$k,)*
                    _ => return None,
                }
            };
        }
        // The K-quants' packed kernels are portable and x86 ones; on ARM they keep the GGML layout.
        let one = match self.isa {
            Isa::Generic => pick!(generic, Q4K => gemm8_q4_k, Q6K => gemm8_q6_k),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pick!(avx2, Q4K => gemm8_q4_k, Q6K => gemm8_q6_k),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => pick!(avx512, Q4K => gemm8_q4_k, Q6K => gemm8_q6_k),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => pick!(dotprod),
            _ => return None,
        };
        let two = match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => match ty {
                GgmlType::Q4_0 => Some(avx512::gemm16_q4_0 as PackedFn),
                GgmlType::Q4_1 => Some(avx512::gemm16_q4_1 as PackedFn),
                GgmlType::Q5_0 => Some(avx512::gemm16_q5_0 as PackedFn),
                GgmlType::Q8_0 => Some(avx512::gemm16_q8_0 as PackedFn),
                GgmlType::Q4K => Some(avx512::gemm16_q4_k as PackedFn),
                GgmlType::Q6K => Some(avx512::gemm16_q6_k as PackedFn),
                _ => None,
            },
            _ => None,
        };
        Some(Packed { one, two })
    }

    /// The activations [`Kernels::packed`]'s kernel of `ty` takes: the portable kernel's
    /// ([`super::repack::act_type`]), except Q8_0 on AVX-512 VNNI, whose kernel takes unsigned activation bytes
    /// against the signed weights (`x86_packed.rs`).
    pub fn packed_act(self, ty: GgmlType) -> super::act::ActType {
        match (self.isa, ty) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, GgmlType::Q8_0) => super::act::ActType::Q8_1U,
            _ => super::repack::act_type(ty),
        }
    }

    /// One head's attention over `n` f16 cache positions (see `generic::attend`); `hd` a multiple of 8 on the x86
    /// paths, of 4 on the ARM ones (else the portable one runs).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        self,
        q: &[f32],
        k: &[f16],
        v: &[f16],
        stride: usize,
        n: usize,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        match self.isa {
            // SAFETY: a detected path's features are present; the kernel checks the lengths.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if q.len().is_multiple_of(8) => unsafe { avx2::attend(q, k, v, stride, n, scale, scores, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if q.len().is_multiple_of(8) => unsafe {
                avx512::attend(q, k, v, stride, n, scale, scores, out)
            },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if q.len() % 4 == 0 => unsafe { neon::attend(q, k, v, stride, n, scale, scores, out) },
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod if q.len() % 4 == 0 => unsafe { dotprod::attend(q, k, v, stride, n, scale, scores, out) },
            _ => generic::attend(q, k, v, stride, n, scale, scores, out),
        }
    }

    /// The `g` query heads in `q` that share one K/V head attend over its `n` positions into `out` (`g` heads):
    /// each head's result equals [`Kernels::attend`] on it alone, bit for bit; the x86 paths convert each cached
    /// element once for all the heads.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_group(
        self,
        q: &[f32],
        g: usize,
        k: &[f16],
        v: &[f16],
        stride: usize,
        n: usize,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let hd = q.len() / g.max(1);
        match self.isa {
            // SAFETY: a detected path's features are present; the kernel checks the lengths.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if hd.is_multiple_of(8) => unsafe {
                avx2::attend_group(q, g, k, v, stride, n, scale, scores, out)
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if hd.is_multiple_of(8) => unsafe {
                avx512::attend_group(q, g, k, v, stride, n, scale, scores, out)
            },
            _ => {
                for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
                    self.attend(qh, k, v, stride, n, scale, scores, oh);
                }
            }
        }
    }

    /// SwiGLU in place, `g = silu(g) u` (see `generic::swiglu`).
    pub fn swiglu(self, g: &mut [f32], u: &[f32]) {
        match self.isa {
            // SAFETY: a detected path's features are present; the kernel checks the lengths.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::swiglu(g, u) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { avx512::swiglu(g, u) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::swiglu(g, u) },
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => unsafe { dotprod::swiglu(g, u) },
            _ => generic::swiglu(g, u),
        }
    }

    /// GeGLU in place, `g = gelu_tanh(g) u` (gemma3; see `generic::geglu`).
    pub fn geglu(self, g: &mut [f32], u: &[f32]) {
        match self.isa {
            // SAFETY: a detected path's features are present; the kernel checks the lengths.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::geglu(g, u) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { avx512::geglu(g, u) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::geglu(g, u) },
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => unsafe { dotprod::geglu(g, u) },
            _ => generic::geglu(g, u),
        }
    }

    /// This path's prefill tile for weights of type `ty`, with its (rows, tokens) (`None`: no tile kernel).
    pub fn tile(self, ty: GgmlType) -> Option<(TileFn, usize, usize)> {
        macro_rules! pick {
            ($m:ident) => {
                (
                    match ty {
                        GgmlType::Q4_0 => $m::tile_q4_0_ as TileFn,
                        GgmlType::Q4_1 => $m::tile_q4_1_,
                        GgmlType::Q5_0 => $m::tile_q5_0_,
                        GgmlType::Q8_0 => $m::tile_q8_0_,
                        GgmlType::Q4K => $m::tile_q4_k_,
                        GgmlType::Q6K => $m::tile_q6_k_,
                        _ => return None,
                    },
                    $m::TILE_ROWS,
                    $m::TILE_TOKENS,
                )
            };
        }
        Some(match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pick!(avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => pick!(avx512),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pick!(neon),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => pick!(dotprod),
            _ => return None,
        })
    }
}

/// Q4_K's eight 6-bit scales and eight 6-bit mins from their 12 packed bytes, one per byte (scale `s` in byte `s`
/// of the first value, min `s` of the second), as ggml unpacks them.
///
/// # Safety
/// `p` points at 12 readable bytes.
#[allow(dead_code)] // used by the SIMD paths only
#[inline]
unsafe fn k4_scales_mins(p: *const u8) -> (u64, u64) {
    let u = |i: usize| unsafe { (p.add(4 * i) as *const u32).read_unaligned() };
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let (k1, k2, k3) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
    let sc_lo = u0 & k1;
    let sc_hi = (u2 & k2) | (((u0 >> 6) & k3) << 4);
    let m_lo = u1 & k1;
    let m_hi = ((u2 >> 4) & k2) | (((u1 >> 6) & k3) << 4);
    (sc_lo as u64 | (sc_hi as u64) << 32, m_lo as u64 | (m_hi as u64) << 32)
}

/// The public entry points of a SIMD path's tile kernels (`tile_q4_0::<R, T>` and the others, defined in the
/// invoking module with its `TILE_ROWS` x `TILE_TOKENS` prefill tile): one row (`dot_*`), four rows (`dot4_*`,
/// decode) and the prefill tile (`tile_*_`), each checking the slices' lengths before the raw-pointer kernel.
macro_rules! entries {
    ($feat:literal) => {
        macro_rules! entry {
            ($one:ident, $four:ident, $tile:ident, $kernel:ident, $wblock:expr, $ablock:expr, $blk:expr) => {
                /// # Safety
                /// The CPU has the target features; `w` and `a` hold `n` elements' blocks.
                #[target_feature(enable = $feat)]
                pub unsafe fn $one(n: usize, w: &[u8], a: &[u8]) -> f32 {
                    assert!(w.len() >= n / $blk * $wblock && a.len() >= n / $blk * $ablock);
                    $kernel::<1, 1>(n, w.as_ptr(), 0, a.as_ptr(), 0)[0][0]
                }

                /// # Safety
                /// The CPU has the target features; `w` holds four rows of `n` elements `stride` bytes apart,
                /// `a` one activation row of `n`.
                #[target_feature(enable = $feat)]
                pub unsafe fn $four(n: usize, w: &[u8], stride: usize, a: &[u8]) -> [f32; 4] {
                    assert!(w.len() >= 3 * stride + n / $blk * $wblock && a.len() >= n / $blk * $ablock);
                    $kernel::<4, 1>(n, w.as_ptr(), stride, a.as_ptr(), 0).map(|r| r[0])
                }

                /// # Safety
                /// The CPU has the target features; `w` holds [`TILE_ROWS`] rows `stride` bytes apart, `a`
                /// [`TILE_TOKENS`] activation rows `astride` bytes apart; `out` takes the sums row by row.
                #[target_feature(enable = $feat)]
                pub unsafe fn $tile(n: usize, w: &[u8], stride: usize, a: &[u8], astride: usize, out: &mut [f32]) {
                    assert!(w.len() >= (TILE_ROWS - 1) * stride + n / $blk * $wblock);
                    assert!(a.len() >= (TILE_TOKENS - 1) * astride + n / $blk * $ablock);
                    assert!(out.len() >= TILE_ROWS * TILE_TOKENS);
                    let v = $kernel::<TILE_ROWS, TILE_TOKENS>(n, w.as_ptr(), stride, a.as_ptr(), astride);
                    for (r, row) in v.iter().enumerate() {
                        out[r * TILE_TOKENS..(r + 1) * TILE_TOKENS].copy_from_slice(row);
                    }
                }
            };
        }
        entry!(dot_q4_0, dot4_q4_0, tile_q4_0_, tile_q4_0, 18, 36, 32);
        entry!(dot_q4_1, dot4_q4_1, tile_q4_1_, tile_q4_1, 20, 40, 32);
        entry!(dot_q5_0, dot4_q5_0, tile_q5_0_, tile_q5_0, 22, 36, 32);
        entry!(dot_q8_0, dot4_q8_0, tile_q8_0_, tile_q8_0, 34, 36, 32);
        entry!(dot_q4_k, dot4_q4_k, tile_q4_k_, tile_q4_k, 144, 292, 256);
        entry!(dot_q6_k, dot4_q6_k, tile_q6_k_, tile_q6_k, 210, 292, 256);
    };
}

#[allow(unused_imports)]
pub(crate) use entries;
