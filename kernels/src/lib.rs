//! Ferrite's numeric kernels.
//!
//! [`reference`] is the scalar definition of every operation: always
//! compiled, simple, and the yardstick every fast kernel is tested against.
//! Hand-tuned versions live under `kernels/avx2/` (x86-64: AVX2 and
//! AVX-512), `kernels/neon/` (aarch64: NEON, dotprod and i8mm) and
//! `kernels/cuda/`. One [`Kernels`] table per tier holds them; [`select`]
//! picks the best tier the CPU has, once, or the one `FERRITE_KERNELS` (or
//! the caller) names, and refuses a tier the CPU lacks with an error (never
//! an illegal instruction).
#![cfg_attr(not(feature = "std"), no_std)]

use core::marker::PhantomData;
use core::ops::Range;

use half::f16;

mod matrix;
pub mod quantize;
pub mod reference;
mod rows;
mod simd;
mod tiles;

#[macro_use]
mod entries;

#[cfg(target_arch = "x86_64")]
#[path = "../avx2/mod.rs"]
mod x86;

#[cfg(target_arch = "aarch64")]
#[path = "../neon/mod.rs"]
mod neon;

pub use reference::{Matrix, ShapeError, Weights};

/// Activations quantized to int8 per group of 32 ([`reference::quantize_acts`]).
#[derive(Clone, Copy, Debug)]
pub struct Acts<'a> {
    /// `n * groups * 32` quants, token after token.
    pub qs: &'a [i8],
    /// `n * groups` scales.
    pub d: &'a [f32],
    /// `n * groups` sums of each group's quants.
    pub sums: &'a [i32],
}

/// Mutable buffers for [`Acts`].
#[derive(Debug)]
pub struct ActsMut<'a> {
    /// `n * groups * 32` quants.
    pub qs: &'a mut [i8],
    /// `n * groups` scales.
    pub d: &'a mut [f32],
    /// `n * groups` sums.
    pub sums: &'a mut [i32],
}

impl ActsMut<'_> {
    /// A shared view.
    pub fn as_acts(&self) -> Acts<'_> {
        Acts { qs: self.qs, d: self.d, sums: self.sums }
    }
}

/// int8 rows with one f32 scale each (the int8 KV cache): row `i` is
/// `qs[i * stride..][..width]` times `scales[i * scale_stride]`, its value
/// `j` the f32 product `qs[..][j] as f32 * scale`.
#[derive(Clone, Copy, Debug)]
pub struct Q8Rows<'a> {
    /// The quants; rows start `stride` apart.
    pub qs: &'a [i8],
    /// The scales; one per row, `scale_stride` apart.
    pub scales: &'a [f32],
    /// Quants from one row to the next.
    pub stride: usize,
    /// Scales from one row to the next.
    pub scale_stride: usize,
}

impl Q8Rows<'_> {
    /// Whether `rows` rows of `width` quants and their scales are inside
    /// the slices (checked arithmetic: no size wraps).
    pub fn holds(&self, rows: usize, width: usize) -> bool {
        let Some(last) = rows.checked_sub(1) else { return true };
        let q_end = last.checked_mul(self.stride).and_then(|e| e.checked_add(width));
        let s_end = last.checked_mul(self.scale_stride);
        q_end.is_some_and(|e| e <= self.qs.len()) && s_end.is_some_and(|e| e < self.scales.len())
    }
}

/// The output of a matrix product, `out[t * stride + r]` for token `t` and
/// row `r`, restricted to a range of rows. Splitting it by rows gives
/// disjoint writers that threads can own: every write lands at a row inside
/// the writer's range (checked), and rows are below `stride`, so two
/// writers never touch the same element.
#[derive(Debug)]
pub struct Out<'a> {
    ptr: *mut f32,
    len: usize,
    stride: usize,
    rows: Range<usize>,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: an `Out` is a unique borrow of the elements of its rows (see the
// type's documentation); sending it to another thread is like sending `&mut`.
unsafe impl Send for Out<'_> {}

impl<'a> Out<'a> {
    /// All rows `0..stride` of `out`.
    pub fn new(out: &'a mut [f32], stride: usize) -> Self {
        Out { ptr: out.as_mut_ptr(), len: out.len(), stride, rows: 0..stride, _borrow: PhantomData }
    }

    /// The rows this writer may write.
    pub fn rows(&self) -> Range<usize> {
        self.rows.clone()
    }

    /// Splits into rows `start..mid` and `mid..end` (`mid` is clamped into
    /// the range).
    pub fn split_at_row(self, mid: usize) -> (Out<'a>, Out<'a>) {
        let mid = mid.clamp(self.rows.start, self.rows.end);
        let a = Out { rows: self.rows.start..mid, ..self };
        let b = Out { rows: mid..self.rows.end, ..self };
        (a, b)
    }

    /// Writes `out[t * stride + r]`.
    ///
    /// # Panics
    /// If `r` is not in this writer's rows or the index is out of bounds.
    #[inline]
    pub fn set(&mut self, t: usize, r: usize, v: f32) {
        // Checked: a wrapped product could land inside the slice.
        let i = t.checked_mul(self.stride).and_then(|i| i.checked_add(r)).filter(|&i| i < self.len);
        assert!(self.rows.contains(&r) && i.is_some(), "matmul output index out of range");
        let i = i.unwrap_or_default();
        // SAFETY: `i < len` (checked), so the write is inside the borrowed
        // slice; `r` lies in this writer's rows, which no other writer of
        // the same slice holds (splits are disjoint, rows < stride), so no
        // other reference observes or writes this element concurrently.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// Writes `out[t * stride + r0 + k] = vals[k]` for every `k`: one run of
    /// consecutive rows of token `t`, checked once (as [`Out::set`] checks
    /// each element).
    ///
    /// # Panics
    /// If the rows `r0..r0 + vals.len()` are not all in this writer's rows
    /// or the run is out of bounds.
    #[inline]
    pub fn set_run(&mut self, t: usize, r0: usize, vals: &[f32]) {
        let end_row = r0.checked_add(vals.len());
        let start = t.checked_mul(self.stride).and_then(|i| i.checked_add(r0));
        let end = start.and_then(|i| i.checked_add(vals.len())).filter(|&e| e <= self.len);
        let inside = end_row.is_some_and(|e| r0 >= self.rows.start && e <= self.rows.end);
        assert!(inside && end.is_some(), "matmul output index out of range");
        let start = start.unwrap_or_default();
        // SAFETY: `start + vals.len() <= len` (checked), so the run is inside
        // the borrowed slice; its rows lie in this writer's rows, which no
        // other writer of the same slice holds (as in `set`), and `vals` is a
        // distinct borrow, so the regions do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.add(start), vals.len()) }
    }
}

/// An [`Out`] that the parts of one parallel region write together, each
/// through [`SharedOut::part`] with rows no other part writes.
#[derive(Debug)]
pub struct SharedOut<'a>(Out<'a>);

// SAFETY: every write goes through an `Out` from `part`, whose contract
// makes the rows of parts alive at the same time disjoint; `Out` is `Send`.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    /// Shares `out` (its rows).
    pub fn new(out: Out<'a>) -> Self {
        SharedOut(out)
    }

    /// The rows this writer covers.
    pub fn rows(&self) -> Range<usize> {
        self.0.rows()
    }

    /// A writer for `rows` (clamped to the shared writer's rows).
    ///
    /// # Safety
    ///
    /// The rows of writers from `part` that are alive at the same time
    /// must not overlap.
    pub unsafe fn part(&self, rows: Range<usize>) -> Out<'_> {
        let o = &self.0;
        let start = rows.start.clamp(o.rows.start, o.rows.end);
        let end = rows.end.clamp(start, o.rows.end);
        Out { ptr: o.ptr, len: o.len, stride: o.stride, rows: start..end, _borrow: PhantomData }
    }
}

/// A kernel tier: a set of kernels for one instruction-set level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The scalar reference kernels (every CPU).
    Reference,
    /// x86-64 with AVX2, FMA and F16C (Haswell, Zen 1 and later).
    Avx2,
    /// x86-64 with AVX-512 F/BW/VL and VNNI (Ice Lake, Zen 4 and later).
    Avx512,
    /// aarch64 with Advanced SIMD only (ARMv8.0: Cortex-A53/A72, Raspberry
    /// Pi 3/4).
    Neon,
    /// aarch64 NEON plus the dot-product instructions (`SDOT`; ARMv8.2+
    /// with FEAT_DotProd: Cortex-A55/A76, Raspberry Pi 5, Apple M1).
    Dotprod,
    /// aarch64 NEON plus the int8 matrix multiplies (`USDOT`, `USMMLA`;
    /// FEAT_I8MM: Cortex-A510/A710/X2 and later, Graviton 3, Apple M2).
    I8mm,
}

impl Tier {
    /// Every tier, in order of preference (best last; tiers of another
    /// architecture are never supported, so their place does not matter).
    pub const ALL: [Tier; 6] = [Tier::Reference, Tier::Avx2, Tier::Avx512, Tier::Neon, Tier::Dotprod, Tier::I8mm];

    /// The name `FERRITE_KERNELS` uses.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Reference => "reference",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
            Tier::Dotprod => "dotprod",
            Tier::I8mm => "i8mm",
        }
    }

    /// The tier named `name` (see [`Tier::name`]).
    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether this CPU can run the tier (detected at run time with `std`,
    /// from the compile-time target features without).
    pub fn supported(self) -> bool {
        match self {
            Tier::Reference => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => x86::has_avx512(),
            #[cfg(not(target_arch = "x86_64"))]
            Tier::Avx2 | Tier::Avx512 => false,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => neon::has_neon(),
            #[cfg(target_arch = "aarch64")]
            Tier::Dotprod => neon::has_dotprod(),
            #[cfg(target_arch = "aarch64")]
            Tier::I8mm => neon::has_i8mm(),
            #[cfg(not(target_arch = "aarch64"))]
            Tier::Neon | Tier::Dotprod | Tier::I8mm => false,
        }
    }

    /// The best tier this CPU supports.
    pub fn best() -> Tier {
        Tier::ALL.into_iter().rev().find(|t| t.supported()).unwrap_or(Tier::Reference)
    }
}

impl core::fmt::Display for Tier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a kernel tier cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// The CPU lacks the tier's instructions.
    Unsupported {
        /// The tier asked for.
        tier: Tier,
        /// The best tier this CPU has.
        best: Tier,
    },
    /// `FERRITE_KERNELS` names no tier.
    UnknownName,
}

impl core::fmt::Display for KernelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KernelError::Unsupported { tier, best } => write!(
                f,
                "kernel tier {tier} needs CPU features this machine lacks (the best it supports is {best}); \
                 unset FERRITE_KERNELS or choose a supported tier"
            ),
            KernelError::UnknownName => {
                f.write_str("FERRITE_KERNELS must be one of: ")?;
                for (i, t) in Tier::ALL.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(t.name())?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for KernelError {}

/// [`Kernels::matmul_f`]: matrix, rows, `x`, `x` row stride, tokens,
/// output, scratch row.
pub type MatmulF = fn(&Matrix<'_>, Range<usize>, &[f32], usize, usize, &mut Out<'_>, &mut [f32]);

/// The kernels of one tier. Tables are only handed out by [`select`] /
/// [`Kernels::for_tier`] after checking the CPU, which is what makes calling
/// their target-feature code sound.
#[derive(Debug)]
pub struct Kernels {
    /// The tier these kernels belong to.
    pub tier: Tier,
    /// [`reference::quantize_acts`].
    pub quantize_acts: fn(&[f32], usize, usize, usize, &mut ActsMut<'_>),
    /// [`reference::matmul_q`].
    pub matmul_q: fn(&Matrix<'_>, Range<usize>, &Acts<'_>, usize, &mut Out<'_>),
    /// [`reference::matmul_f`] (f32/f16 weights; the last argument is a
    /// scratch row of `>= cols` floats).
    pub matmul_f: MatmulF,
    /// [`reference::dot_f32`].
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// [`reference::dot_f16`].
    pub dot_f16: fn(&[f32], &[f16]) -> f32,
    /// [`reference::axpy`].
    pub axpy: fn(f32, &[f32], &mut [f32]),
    /// [`reference::axpy_f16`].
    pub axpy_f16: fn(f32, &[f16], &mut [f32]),
    /// [`reference::rmsnorm`].
    pub rmsnorm: fn(&[f32], &[f32], f32, &mut [f32]),
    /// [`reference::softmax`] (fast tiers: a polynomial `exp`, within a few
    /// ulp of `libm::expf`).
    pub softmax: fn(&mut [f32]),
    /// [`reference::swiglu`] (fast tiers: the same `exp`).
    pub swiglu: fn(&mut [f32], &[f32]),
    /// [`reference::dot_rows`].
    pub dot_rows: RowsFn<f32>,
    /// [`reference::dot_rows_f16`].
    pub dot_rows_f16: RowsFn<f16>,
    /// [`reference::axpy_rows`].
    pub axpy_rows: fn(&[f32], &[f32], usize, &mut [f32]),
    /// [`reference::axpy_rows_f16`].
    pub axpy_rows_f16: fn(&[f32], &[f16], usize, &mut [f32]),
    /// [`reference::rope_with`].
    pub rope: fn(&mut [f32], &[f32]),
    /// [`reference::to_f16`] (bit-identical in every tier).
    pub to_f16: fn(&[f32], &mut [f16]),
    /// [`reference::round_f16`] (bit-identical in every tier).
    pub round_f16: fn(&mut [f32]),
    /// [`reference::quantize_rows_q8`] (bit-identical in every tier).
    pub quantize_rows_q8: fn(&[f32], usize, &mut [i8], &mut [f32]),
    /// [`reference::round_q8`] (bit-identical in every tier).
    pub round_q8: fn(&mut [f32], usize),
    /// [`reference::dot_rows_q8`]: per key bit-identical to the tier's
    /// [`Kernels::dot_rows`] over the key's f32 values.
    pub dot_rows_q8: fn(&[f32], Q8Rows<'_>, f32, &mut [f32]),
    /// [`reference::axpy_rows_q8`]: bit-identical to the tier's
    /// [`Kernels::axpy_rows`] over the rows' f32 values.
    pub axpy_rows_q8: fn(&[f32], Q8Rows<'_>, &mut [f32]),
}

/// [`Kernels::dot_rows`]: query, keys, key stride, scale, scores.
pub type RowsFn<T> = fn(&[f32], &[T], usize, f32, &mut [f32]);

/// The reference tier's table, which every other tier starts from
/// (`Kernels { tier, ..., ..REFERENCE }`), overriding what it does better.
const REFERENCE: Kernels = Kernels {
    tier: Tier::Reference,
    quantize_acts: reference::quantize_acts,
    matmul_q: reference::matmul_q,
    matmul_f: reference::matmul_f,
    dot: reference::dot_f32,
    dot_f16: reference::dot_f16,
    axpy: reference::axpy,
    axpy_f16: reference::axpy_f16,
    rmsnorm: reference::rmsnorm,
    softmax: reference::softmax,
    swiglu: reference::swiglu,
    dot_rows: reference::dot_rows,
    dot_rows_f16: reference::dot_rows_f16,
    axpy_rows: reference::axpy_rows,
    axpy_rows_f16: reference::axpy_rows_f16,
    rope: reference::rope_with,
    to_f16: reference::to_f16,
    round_f16: reference::round_f16,
    quantize_rows_q8: reference::quantize_rows_q8,
    round_q8: reference::round_q8,
    dot_rows_q8: reference::dot_rows_q8,
    axpy_rows_q8: reference::axpy_rows_q8,
};

impl Kernels {
    /// The table of `tier`, if this CPU supports it.
    pub fn for_tier(tier: Tier) -> Result<&'static Kernels, KernelError> {
        if !tier.supported() {
            return Err(KernelError::Unsupported { tier, best: Tier::best() });
        }
        Ok(match tier {
            Tier::Reference => &REFERENCE,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => &x86::AVX2,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => &x86::AVX512,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => &neon::NEON,
            #[cfg(target_arch = "aarch64")]
            Tier::Dotprod => &neon::DOTPROD,
            #[cfg(target_arch = "aarch64")]
            Tier::I8mm => &neon::I8MM,
            // Another architecture's tiers: `supported()` said no above.
            _ => &REFERENCE,
        })
    }
}

/// The kernels to use: `requested` if given; otherwise, with `std`, the
/// tier named by the `FERRITE_KERNELS` environment variable if set;
/// otherwise the best tier of this CPU.
pub fn select(requested: Option<Tier>) -> Result<&'static Kernels, KernelError> {
    let tier = match requested {
        Some(t) => t,
        None => env_tier()?.unwrap_or_else(Tier::best),
    };
    Kernels::for_tier(tier)
}

/// The tier `FERRITE_KERNELS` names (`None` when unset or empty).
#[cfg(feature = "std")]
pub fn env_tier() -> Result<Option<Tier>, KernelError> {
    match std::env::var("FERRITE_KERNELS") {
        Ok(s) if !s.is_empty() => Tier::from_name(s.trim()).map(Some).ok_or(KernelError::UnknownName),
        _ => Ok(None),
    }
}

/// Without `std` there is no environment: always `None`.
#[cfg(not(feature = "std"))]
pub fn env_tier() -> Result<Option<Tier>, KernelError> {
    Ok(None)
}
