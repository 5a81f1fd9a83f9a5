//! Dot-product kernels, one file per instruction set (as ggml-cpu lays them out), chosen at run time:
//! - `generic.rs`: portable Rust, on every machine; the path every other one is tested against.
//! - `avx2.rs`: AVX2 + FMA + F16C (x86-64 since 2013).
//! - `avx512.rs`: AVX-512 VNNI on 256-bit vectors.
//!
//! The x86 files share their bodies through `x86.rs`. [`Isa::detect`] picks the best the CPU has;
//! `EDGE_CPU_ISA=generic|avx2|avx512` asks for a lower one (to compare them, or to rule one out).

use crate::quant::GgmlType;

pub mod generic;

#[cfg(target_arch = "x86_64")]
mod x86;

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

/// An instruction-set path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Generic,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
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
                    && is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512Vnni);
                }
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
            _ => return None,
        })
    }

    /// One head's attention over `n` cache positions (see `generic::attend`); `hd` a multiple of 8 on the
    /// SIMD paths (else the portable one runs).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        stride: usize,
        n: usize,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        match self.isa {
            // SAFETY: a detected path's features are present; the kernel checks the lengths.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if q.len() % 8 == 0 => unsafe { avx2::attend(q, k, v, stride, n, scale, scores, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if q.len() % 8 == 0 => unsafe { avx512::attend(q, k, v, stride, n, scale, scores, out) },
            _ => generic::attend(q, k, v, stride, n, scale, scores, out),
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
            _ => return None,
        })
    }
}
