//! Borrowed weight matrices: [`Weights`] (a storage type over its planes)
//! and [`Matrix`] (weights with a checked shape), the one type every matmul
//! kernel takes.

use ferrite_format::quant::{self, GROUP, Q4_GROUP_BYTES, Q4_TILE_BYTES, Q8_GROUP_BYTES, Q8_TILE_BYTES, ROW_BLOCK};
use ferrite_format::DType;
use half::f16;

use crate::reference::tile_of;
/// A borrowed weight matrix `[rows, cols]` in any storage type. Quantized
/// rows are padded to whole groups (see [`ferrite_format::quant`]).
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// Row-major f32.
    F32(&'a [f32]),
    /// Row-major f16.
    F16(&'a [f16]),
    /// q8 planes: quants, then one scale per group.
    Q8 {
        /// `rows * groups * 32` bytes.
        qs: &'a [u8],
        /// `rows * groups` scales.
        scales: &'a [f16],
    },
    /// q4 planes: quants, then one scale per group.
    Q4 {
        /// `rows * groups * 16` bytes.
        qs: &'a [u8],
        /// `rows * groups` scales.
        scales: &'a [f16],
    },
    /// q4a planes: unsigned quants, one scale and one minimum per group.
    Q4A {
        /// `rows * groups * 16` bytes.
        qs: &'a [u8],
        /// `rows * groups` scales.
        scales: &'a [f16],
        /// `rows * groups` minimums.
        mins: &'a [f16],
    },
    /// q5_0 planes (`format::quant::planes`): `qs` the levels' low 4 bits
    /// in q4 tiles (`rows * groups * 16` bytes), `qh` their bit 4 (`* 4`),
    /// one scale per group.
    #[allow(missing_docs)] // the planes are described above
    Q5_0 { qs: &'a [u8], qh: &'a [u8], scales: &'a [f16] },
    /// q5_1 planes: as q5_0, and one minimum per group.
    #[allow(missing_docs)] // the planes are described above
    Q5_1 { qs: &'a [u8], qh: &'a [u8], scales: &'a [f16], mins: &'a [f16] },
    /// q4k planes: 4-bit levels (`rows * groups * 16` bytes), 6-bit group
    /// scales and minimums (a byte each), `d` and `dmin` per super-block.
    #[allow(missing_docs)] // the planes are described above
    Q4K { qs: &'a [u8], scales: &'a [u8], mins: &'a [u8], d: &'a [f16], dmin: &'a [f16] },
    /// q5k planes: as q4k, with bit 4 of each level in `qh` (`* 4` bytes).
    #[allow(missing_docs)] // the planes are described above
    Q5K { qs: &'a [u8], qh: &'a [u8], scales: &'a [u8], mins: &'a [u8], d: &'a [f16], dmin: &'a [f16] },
    /// q6k planes: the levels' low 4 bits, their bits 4..6 in `qh` (`* 8`
    /// bytes), two int8 scales per group (one per 16 elements), `d` per
    /// super-block.
    #[allow(missing_docs)] // the planes are described above
    Q6K { qs: &'a [u8], qh: &'a [u8], scales: &'a [i8], d: &'a [f16] },
}

impl<'a> Weights<'a> {
    /// Whether the weights are multiplied by [`matmul_q`] with int8
    /// activations: q8, q4, q5_0, q5_1 and the K types (q4a, f16 and f32
    /// weights go through [`matmul_f`]).
    pub fn is_quantized(&self) -> bool {
        !matches!(self, Weights::F32(_) | Weights::F16(_) | Weights::Q4A { .. })
    }

    /// The storage type.
    pub fn dtype(&self) -> DType {
        match self {
            Weights::F32(_) => DType::F32,
            Weights::F16(_) => DType::F16,
            Weights::Q8 { .. } => DType::Q8,
            Weights::Q4 { .. } => DType::Q4,
            Weights::Q4A { .. } => DType::Q4A,
            Weights::Q5_0 { .. } => DType::Q5_0,
            Weights::Q5_1 { .. } => DType::Q5_1,
            Weights::Q4K { .. } => DType::Q4K,
            Weights::Q5K { .. } => DType::Q5K,
            Weights::Q6K { .. } => DType::Q6K,
        }
    }

    /// The weights of a quantized tensor from its planes as bytes, in
    /// [`quant::planes`]' order; `None` for f32/f16 or a plane of f16s that
    /// is misaligned or of odd length.
    pub fn from_planes(dtype: DType, p: [&'a [u8]; quant::MAX_PLANES]) -> Option<Self> {
        let half = |b: &'a [u8]| bytemuck::try_cast_slice::<u8, f16>(b).ok();
        Some(match dtype {
            DType::Q8 => Weights::Q8 { qs: p[0], scales: half(p[1])? },
            DType::Q4 => Weights::Q4 { qs: p[0], scales: half(p[1])? },
            DType::Q4A => Weights::Q4A { qs: p[0], scales: half(p[1])?, mins: half(p[2])? },
            DType::Q5_0 => Weights::Q5_0 { qs: p[0], qh: p[1], scales: half(p[2])? },
            DType::Q5_1 => Weights::Q5_1 { qs: p[0], qh: p[1], scales: half(p[2])?, mins: half(p[3])? },
            DType::Q4K => Weights::Q4K { qs: p[0], scales: p[1], mins: p[2], d: half(p[3])?, dmin: half(p[4])? },
            DType::Q5K => {
                Weights::Q5K { qs: p[0], qh: p[1], scales: p[2], mins: p[3], d: half(p[4])?, dmin: half(p[5])? }
            }
            DType::Q6K => Weights::Q6K { qs: p[0], qh: p[1], scales: bytemuck::cast_slice(p[2]), d: half(p[3])? },
            _ => return None,
        })
    }

    /// The lengths in elements of the planes of the types with more than
    /// three, in [`quant::planes`]' order, and each element's size.
    fn plane_lens(&self) -> [(usize, usize); quant::MAX_PLANES] {
        let mut out = [(0, 1); quant::MAX_PLANES];
        let lens: &[(usize, usize)] = &match *self {
            Weights::Q5_0 { qs, qh, scales } => {
                [(qs.len(), 1), (qh.len(), 1), (scales.len(), 2), (0, 1), (0, 1), (0, 1)]
            }
            Weights::Q5_1 { qs, qh, scales, mins } => {
                [(qs.len(), 1), (qh.len(), 1), (scales.len(), 2), (mins.len(), 2), (0, 1), (0, 1)]
            }
            Weights::Q4K { qs, scales, mins, d, dmin } => {
                [(qs.len(), 1), (scales.len(), 1), (mins.len(), 1), (d.len(), 2), (dmin.len(), 2), (0, 1)]
            }
            Weights::Q5K { qs, qh, scales, mins, d, dmin } => {
                [(qs.len(), 1), (qh.len(), 1), (scales.len(), 1), (mins.len(), 1), (d.len(), 2), (dmin.len(), 2)]
            }
            Weights::Q6K { qs, qh, scales, d } => {
                [(qs.len(), 1), (qh.len(), 1), (scales.len(), 1), (d.len(), 2), (0, 1), (0, 1)]
            }
            _ => [(0, 1); quant::MAX_PLANES],
        };
        out.copy_from_slice(lens);
        out
    }
}

/// A weight matrix with its shape, made only by [`Matrix::new`], which
/// checks that the planes hold every element the shape says: the kernels
/// index them without further checks of their own sizes.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// The data.
    pub(crate) w: Weights<'a>,
    /// Output features.
    pub(crate) rows: usize,
    /// Input features (unpadded).
    pub(crate) cols: usize,
}

/// Why [`Matrix::new`] refused a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// `rows * cols` (or the padded plane sizes) overflow `usize`.
    Overflow,
    /// A plane is shorter than the shape needs.
    TooShort {
        /// Which plane (`"weights"`, `"quants"`, `"scales"`, `"mins"`).
        plane: &'static str,
        /// Elements it needs.
        needed: usize,
        /// Elements it has.
        given: usize,
    },
}

impl core::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ShapeError::Overflow => f.write_str("matrix shape overflows"),
            ShapeError::TooShort { plane, needed, given } => {
                write!(f, "matrix {plane} plane holds {given} elements, the shape needs {needed}")
            }
        }
    }
}

impl<'a> Matrix<'a> {
    /// A `[rows, cols]` matrix over `w`, if its planes are long enough:
    /// `rows * cols` values for f32/f16; for the quantized types the tiled
    /// planes of [`quant`] (rows padded to whole row blocks, columns to whole
    /// groups). Sizes are computed with checked arithmetic, so no shape
    /// wraps; longer planes are allowed.
    pub fn new(w: Weights<'a>, rows: usize, cols: usize) -> Result<Self, ShapeError> {
        let ov = |v: Option<usize>| v.ok_or(ShapeError::Overflow);
        let check = |plane, needed: usize, given: usize| {
            if given < needed {
                Err(ShapeError::TooShort { plane, needed, given })
            } else {
                Ok(())
            }
        };
        // Tiles of the padded rows, group by group (quantized planes only).
        let groups = || ov(rows.checked_next_multiple_of(ROW_BLOCK).and_then(|p| p.checked_mul(cols.div_ceil(GROUP))));
        match w {
            Weights::F32(v) => check("weights", ov(rows.checked_mul(cols))?, v.len())?,
            Weights::F16(v) => check("weights", ov(rows.checked_mul(cols))?, v.len())?,
            Weights::Q8 { qs, scales } => {
                let groups = groups()?;
                check("quants", ov(groups.checked_mul(Q8_GROUP_BYTES))?, qs.len())?;
                check("scales", groups, scales.len())?;
            }
            Weights::Q4 { qs, scales } => {
                let groups = groups()?;
                check("quants", ov(groups.checked_mul(Q4_GROUP_BYTES))?, qs.len())?;
                check("scales", groups, scales.len())?;
            }
            Weights::Q4A { qs, scales, mins } => {
                let groups = groups()?;
                check("quants", ov(groups.checked_mul(Q4_GROUP_BYTES))?, qs.len())?;
                check("scales", groups, scales.len())?;
                check("mins", groups, mins.len())?;
            }
            _ => {
                // Every plane of the type, in elements of its slice type.
                for (p, (given, size)) in quant::planes(w.dtype()).iter().zip(w.plane_lens()) {
                    check(p.name, ov(p.bytes(rows, cols))? / size, given)?;
                }
            }
        }
        Ok(Matrix { w, rows, cols })
    }

    /// The weights.
    pub fn weights(&self) -> Weights<'a> {
        self.w
    }

    /// Checks that a kernel's `rows` lie inside the matrix.
    ///
    /// # Panics
    /// If `rows` is reversed or ends past [`Matrix::rows`].
    #[inline]
    pub fn check_rows(&self, rows: &core::ops::Range<usize>) {
        assert!(
            rows.start <= rows.end && rows.end <= self.rows,
            "matmul rows {rows:?} outside the matrix's {}",
            self.rows
        );
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (unpadded).
    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl Matrix<'_> {
    /// Writes row `r` as f32 into `dst[..cols]`.
    ///
    /// # Panics
    /// If `r >= rows` or `dst` is shorter than `cols` (callers validate shapes).
    pub fn dequantize_row(&self, r: usize, dst: &mut [f32]) {
        let cols = self.cols;
        let dst = &mut dst[..cols];
        match self.w {
            Weights::F32(w) => dst.copy_from_slice(&w[r * cols..(r + 1) * cols]),
            Weights::F16(w) => {
                for (o, h) in dst.iter_mut().zip(&w[r * cols..(r + 1) * cols]) {
                    *o = h.to_f32();
                }
            }
            Weights::Q8 { qs, scales } => {
                for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
                    let (tile, d) = tile_of(qs, scales, Q8_TILE_BYTES, cols, r, g);
                    for (j, o) in chunk.iter_mut().enumerate() {
                        *o = quant::q8_tile_get(tile, r % ROW_BLOCK, j) as f32 * d;
                    }
                }
            }
            Weights::Q4 { qs, scales } => {
                for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
                    let (tile, d) = tile_of(qs, scales, Q4_TILE_BYTES, cols, r, g);
                    for (j, o) in chunk.iter_mut().enumerate() {
                        *o = quant::q4_tile_get(tile, r % ROW_BLOCK, j) as f32 * d;
                    }
                }
            }
            Weights::Q4A { qs, scales, mins } => {
                for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
                    let (tile, d) = tile_of(qs, scales, Q4_TILE_BYTES, cols, r, g);
                    let (_, m) = tile_of(qs, mins, Q4_TILE_BYTES, cols, r, g);
                    for (j, o) in chunk.iter_mut().enumerate() {
                        *o = quant::q4_tile_nibble(tile, r % ROW_BLOCK, j) as f32 * d + m;
                    }
                }
            }
            _ => self.dequantize_row_planes(r, dst),
        }
    }

    /// The unsigned levels of row `r`'s group `g` of a q5_0, q5_1, q4k,
    /// q5k or q6k matrix (zeros for the other types), before any offset
    /// ([`quant::tile_level`]).
    fn levels(&self, r: usize, g: usize) -> [u8; GROUP] {
        let groups = self.cols.div_ceil(GROUP);
        let (qs, qh, high_bits) = match self.w {
            Weights::Q5_0 { qs, qh, .. } | Weights::Q5_1 { qs, qh, .. } | Weights::Q5K { qs, qh, .. } => (qs, qh, 1),
            Weights::Q6K { qs, qh, .. } => (qs, qh, 2),
            Weights::Q4K { qs, .. } => (qs, &[][..], 0),
            _ => return [0; GROUP],
        };
        let high_unit = 4 * high_bits as usize;
        let ti = quant::tile_index(groups, r / ROW_BLOCK, g);
        let tile = &qs[ti * Q4_TILE_BYTES..(ti + 1) * Q4_TILE_BYTES];
        let high = qh.get(ti * ROW_BLOCK * high_unit..(ti + 1) * ROW_BLOCK * high_unit).unwrap_or(&[]);
        core::array::from_fn(|j| quant::tile_level(tile, high, high_bits, r % ROW_BLOCK, j))
    }

    /// The f32 factors of row `r`'s group `g` of a q5_0, q5_1, q4k, q5k or
    /// q6k matrix: q5_0 `[scale, 0]`, q5_1 `[scale, min]`, q4k/q5k `[d ·
    /// sc, dmin · m]`, q6k `[d · s0, d · s1]` (each product in f32).
    pub(crate) fn factors(&self, r: usize, g: usize) -> [f32; 2] {
        let groups = self.cols.div_ceil(GROUP);
        let si = quant::scale_index(groups, r, g);
        let di = quant::scale_index(self.cols.div_ceil(quant::SUPER), r, g / quant::SUPER_GROUPS);
        match self.w {
            Weights::Q5_0 { scales, .. } => [scales[si].to_f32(), 0.0],
            Weights::Q5_1 { scales, mins, .. } => [scales[si].to_f32(), mins[si].to_f32()],
            Weights::Q4K { scales, mins, d, dmin, .. } | Weights::Q5K { scales, mins, d, dmin, .. } => {
                [d[di].to_f32() * scales[si] as f32, dmin[di].to_f32() * mins[si] as f32]
            }
            Weights::Q6K { scales, d, .. } => {
                let d = d[di].to_f32();
                [d * scales[2 * si] as f32, d * scales[2 * si + 1] as f32]
            }
            _ => [0.0; 2],
        }
    }

    /// [`Matrix::dequantize_row`] for q5_0, q5_1, q4k, q5k and q6k, with
    /// llama.cpp's arithmetic in f32 (so the values are bit for bit those
    /// of its `dequantize_row_*` and of the `gguf` package):
    /// q5_0 `(u - 16) * d`; q5_1 `u * d + m`; q4k/q5k `(d * sc) * u - dmin
    /// * m`; q6k `(d * sc) * (u - 32)`.
    fn dequantize_row_planes(&self, r: usize, dst: &mut [f32]) {
        for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
            let (u, [f0, f1]) = (self.levels(r, g), self.factors(r, g));
            for (j, o) in chunk.iter_mut().enumerate() {
                let u = u[j];
                *o = match self.w {
                    Weights::Q5_0 { .. } => (u as i32 - quant::Q5_OFFSET) as f32 * f0,
                    Weights::Q5_1 { .. } => u as f32 * f0 + f1,
                    Weights::Q4K { .. } | Weights::Q5K { .. } => f0 * u as f32 - f1,
                    Weights::Q6K { .. } => [f0, f1][j / 16] * (u as i32 - quant::Q6_OFFSET) as f32,
                    _ => 0.0,
                };
            }
        }
    }

    /// What the integer product ([`crate::reference::matmul_q`]) multiplies
    /// for row `r`'s group `g`, or `None` for the types it leaves alone
    /// (f32, f16, q4a).
    pub(crate) fn int_group(&self, r: usize, g: usize) -> Option<IntGroup> {
        let groups = self.cols.div_ceil(GROUP);
        let rr = r % ROW_BLOCK;
        let one = |w: [i32; GROUP], scale: f32| IntGroup { w, sub: [1, 1], scale, min: None };
        Some(match self.w {
            Weights::Q8 { qs, scales } => {
                let (tile, d) = tile_of(qs, scales, Q8_TILE_BYTES, self.cols, r, g);
                one(core::array::from_fn(|j| quant::q8_tile_get(tile, rr, j)), d)
            }
            Weights::Q4 { qs, scales } => {
                let (tile, d) = tile_of(qs, scales, Q4_TILE_BYTES, self.cols, r, g);
                one(core::array::from_fn(|j| quant::q4_tile_get(tile, rr, j)), d)
            }
            Weights::Q5_0 { .. } => {
                let (u, [d, _]) = (self.levels(r, g), self.factors(r, g));
                one(u.map(|u| u as i32 - quant::Q5_OFFSET), d)
            }
            Weights::Q6K { scales, d, .. } => {
                let si = quant::scale_index(groups, r, g);
                let di = quant::scale_index(self.cols.div_ceil(quant::SUPER), r, g / quant::SUPER_GROUPS);
                IntGroup {
                    w: self.levels(r, g).map(|u| u as i32 - quant::Q6_OFFSET),
                    sub: [scales[2 * si] as i32, scales[2 * si + 1] as i32],
                    scale: d[di].to_f32(),
                    min: None,
                }
            }
            Weights::Q5_1 { .. } | Weights::Q4K { .. } | Weights::Q5K { .. } => {
                let (u, [f0, f1]) = (self.levels(r, g), self.factors(r, g));
                // The K types subtract their minimum: its factor negated (exact).
                let min = if matches!(self.w, Weights::Q5_1 { .. }) { f1 } else { -f1 };
                IntGroup { w: u.map(i32::from), sub: [1, 1], scale: f0, min: Some(min) }
            }
            Weights::F32(_) | Weights::F16(_) | Weights::Q4A { .. } => return None,
        })
    }
}

/// One weight group as the integer product sees it ([`Matrix::int_group`]):
/// with int8 activations `a` (scale `ad`, sum `s`) and `isum = sub[0] *
/// sum_{j<16} w[j] a[j] + sub[1] * sum_{j>=16} w[j] a[j]` (exact), the
/// group adds `isum as f32 * (scale * ad)` to the row's accumulator
/// (symmetric types, `min` `None`) or `((isum as f32) * scale + (s as f32)
/// * min) * ad` (affine types), each in f32 in exactly that order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IntGroup {
    /// The levels as multiplied: signed values (offsets removed) for q8,
    /// q4, q5_0 and q6k; the unsigned levels for q5_1, q4k and q5k.
    pub(crate) w: [i32; GROUP],
    /// Integer factors of elements 0..16 and 16..32 (q6k's int8
    /// sub-scales; 1 for the other types).
    pub(crate) sub: [i32; 2],
    /// The float scale: the group's (q8, q4, q5_0, q5_1), `d * sc`
    /// (q4k, q5k) or the super-block's `d` (q6k).
    pub(crate) scale: f32,
    /// The affine types' minimum factor: q5_1's minimum, `-(dmin * m)`
    /// for q4k and q5k.
    pub(crate) min: Option<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reference, Acts, Kernels, Out, Tier};
    use proptest::prelude::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::vec;
    use std::vec::Vec;

    /// 4096 cases natively; under Miri (`scripts/miri.sh`) 6, each
    /// interpreted about a thousand times slower, and no failure file
    /// (Miri's isolation forbids file access; a failing case is printed
    /// either way).
    fn config() -> ProptestConfig {
        let mut config = ProptestConfig { cases: 4096, ..ProptestConfig::default() };
        if cfg!(miri) {
            config.cases = 6;
            config.failure_persistence = None;
        }
        config
    }

    /// Sizes as a test would pick them: small, near a block edge, or huge.
    fn size() -> impl Strategy<Value = usize> {
        prop_oneof![0usize..70, usize::MAX / 64..=usize::MAX, Just(usize::MAX / ROW_BLOCK + 1), Just(1usize << 40)]
    }

    /// How far a buffer is from what a call needs: mostly enough.
    fn delta() -> impl Strategy<Value = i64> {
        prop_oneof![1 => -2i64..0, 6 => 0i64..6]
    }

    /// Planes of `lens` (in elements) of storage type `kind` (0..5).
    struct Planes {
        f32s: Vec<f32>,
        f16s: Vec<f16>,
        qs: Vec<u8>,
        scales: Vec<f16>,
        mins: Vec<f16>,
    }

    impl Planes {
        fn new(lens: [usize; 3]) -> Self {
            Planes {
                f32s: vec![0.5; lens[0]],
                f16s: vec![f16::from_f32(0.5); lens[0]],
                qs: vec![0x35; lens[0]],
                scales: vec![f16::from_f32(0.25); lens[1]],
                mins: vec![f16::from_f32(-0.5); lens[2]],
            }
        }

        fn weights(&self, kind: u8) -> Weights<'_> {
            let (qs, scales, mins) = (&self.qs[..], &self.scales[..], &self.mins[..]);
            match kind {
                0 => Weights::F32(&self.f32s),
                1 => Weights::F16(&self.f16s),
                2 => Weights::Q8 { qs, scales },
                3 => Weights::Q4 { qs, scales },
                _ => Weights::Q4A { qs, scales, mins },
            }
        }
    }

    /// What `Matrix::new` must accept, computed in u128 (no overflow
    /// possible for usize operands): every plane holds what the shape needs.
    fn fits(kind: u8, rows: usize, cols: usize, lens: [usize; 3]) -> bool {
        let (rows, cols) = (rows as u128, cols as u128);
        let groups = rows.div_ceil(ROW_BLOCK as u128) * ROW_BLOCK as u128 * cols.div_ceil(GROUP as u128);
        let [a, b, c] = lens.map(|l| l as u128);
        let in_usize = |v: u128| v <= usize::MAX as u128;
        match kind {
            0 | 1 => in_usize(rows * cols) && rows * cols <= a,
            2 => in_usize(groups * Q8_GROUP_BYTES as u128) && groups * Q8_GROUP_BYTES as u128 <= a && groups <= b,
            3 => in_usize(groups * Q4_GROUP_BYTES as u128) && groups * Q4_GROUP_BYTES as u128 <= a && groups <= b,
            _ => {
                in_usize(groups * Q4_GROUP_BYTES as u128)
                    && groups * Q4_GROUP_BYTES as u128 <= a
                    && groups <= b
                    && groups <= c
            }
        }
    }

    std::thread_local! {
        /// Whether this thread's panics are expected (not printed).
        static QUIET: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    }

    /// Runs `f`; a panic (a safe assert saying no) is an acceptable answer,
    /// caught without printing it or taking a backtrace (thousands of them
    /// would take minutes with `RUST_BACKTRACE=1`).
    fn returns(f: impl FnOnce()) -> bool {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(std::boxed::Box::new(move |info| {
                if !QUIET.with(|q| q.get()) {
                    default(info)
                }
            }));
        });
        QUIET.with(|q| q.set(true));
        let ok = catch_unwind(AssertUnwindSafe(f)).is_ok();
        QUIET.with(|q| q.set(false));
        ok
    }

    fn tiers() -> impl Iterator<Item = &'static Kernels> {
        Tier::ALL.iter().filter_map(|&t| Kernels::for_tier(t).ok())
    }

    proptest! {
        #![proptest_config(config())]

        /// The same for the types laid out by `quant::planes` (q5_0, q5_1,
        /// q4k, q5k, q6k): accepted exactly when every plane holds what the
        /// shape needs (computed here in u128), and then the reference
        /// dequantization of the last row stays inside the planes.
        #[test]
        fn new_accepts_exactly_the_shapes_the_k_planes_hold(
            kind in 0usize..5,
            rows in size(),
            cols in size(),
            lens in [0usize..1500, 0usize..400, 0usize..200, 0usize..200, 0usize..60, 0usize..60],
        ) {
            let dtype = [DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K][kind];
            // u16 storage: f16 planes need 2-byte alignment; every length even.
            let store: Vec<Vec<u16>> = lens.iter().map(|&l| vec![0x3c00; l]).collect();
            let planes: [&[u8]; quant::MAX_PLANES] = core::array::from_fn(|i| bytemuck::cast_slice(&store[i][..]));
            let w = Weights::from_planes(dtype, planes).expect("even, aligned planes");
            let (r, c) = (rows as u128, cols as u128);
            let padded = r.div_ceil(ROW_BLOCK as u128) * ROW_BLOCK as u128;
            // The padded row count itself must fit in usize.
            let fits = padded <= usize::MAX as u128 && quant::planes(dtype).iter().enumerate().all(|(i, p)| {
                let per = if p.per == quant::Per::Group { GROUP } else { quant::SUPER } as u128;
                let need = padded * c.div_ceil(per) * p.unit as u128;
                need <= usize::MAX as u128 && need <= 2 * lens[i] as u128
            });
            let m = Matrix::new(w, rows, cols);
            prop_assert_eq!(m.is_ok(), fits, "{:?}", m.err());
            if let Ok(m) = m {
                if rows > 0 && cols < 100 {
                    let mut row = vec![0f32; cols];
                    m.dequantize_row(rows - 1, &mut row);
                }
            }
        }

        /// Any shape over any planes: `Matrix::new` accepts exactly the
        /// shapes the planes hold, huge ones included, and never panics.
        #[test]
        fn new_accepts_exactly_the_shapes_the_planes_hold(
            kind in 0u8..5,
            rows in size(),
            cols in size(),
            lens in [0usize..3000, 0usize..200, 0usize..200],
        ) {
            let planes = Planes::new(lens);
            let m = Matrix::new(planes.weights(kind), rows, cols);
            prop_assert_eq!(m.is_ok(), fits(kind, rows, cols, lens), "{:?}", m.err());
            if let Ok(m) = m {
                prop_assert_eq!((m.rows(), m.cols()), (rows, cols));
            }
        }

        /// Every tier's safe matrix products, handed a checked matrix and
        /// rows, token counts, strides and buffers near what the call needs
        /// (a little short, exact or longer; now and then huge): they return
        /// when the buffers hold what the call needs (and then agree with
        /// the reference), and otherwise return or panic, but never read or
        /// write out of bounds (Miri checks that part).
        #[test]
        fn safe_matmuls_stay_in_bounds(
            kind in 0u8..5,
            rows in 0usize..20,
            cols in 0usize..80,
            extra in 0usize..40,
            ends in (0u32..=100, 0u32..=110),
            n in prop_oneof![8 => 0usize..6, 1 => size()],
            wild in prop_oneof![8 => Just(None), 1 => (0usize..5, size()).prop_map(Some)],
            deltas in [delta(), delta(), delta(), delta(), delta(), delta(), delta()],
            pads in [0usize..3, 0usize..3],
        ) {
            let groups = rows.div_ceil(ROW_BLOCK) * ROW_BLOCK * cols.div_ceil(GROUP);
            let exact = match kind {
                0 | 1 => [rows * cols, 0, 0],
                2 => [groups * Q8_GROUP_BYTES, groups, 0],
                3 => [groups * Q4_GROUP_BYTES, groups, 0],
                _ => [groups * Q4_GROUP_BYTES, groups, groups],
            };
            let planes = Planes::new(exact.map(|l| l + extra));
            let m = Matrix::new(planes.weights(kind), rows, cols).expect("planes hold the shape");

            // The call: rows `start..end` (`end` up to 10% past the matrix),
            // buffers of what `n` tokens need plus a small signed delta.
            let start = rows * ends.0 as usize / 100;
            let mut rows_range = start..(rows * ends.1 as usize / 100).max(start);
            let (mut x_stride, mut out_stride) = (cols + pads[0], rows_range.end + pads[1]);
            // A huge value in one place: a range end, a stride or n.
            match wild {
                Some((0, v)) => rows_range.end = v,
                Some((1, v)) => rows_range.start = v,
                Some((2, v)) => x_stride = v,
                Some((3, v)) => out_stride = v,
                _ => {}
            }
            let near = |need: Option<usize>, d: i64| need.map_or(8, |v| v.min(4096).saturating_add_signed(d as isize));
            let tokens = |stride: usize, width: usize| n.checked_sub(1).map_or(Some(0), |l| l.checked_mul(stride)?.checked_add(width));
            let g = cols.div_ceil(GROUP);
            let x_len = near(tokens(x_stride, cols), deltas[0]);
            let out_len = near(tokens(out_stride, rows_range.end), deltas[1]);
            let act_groups = n.checked_mul(g);
            let acts_lens = [
                near(act_groups.and_then(|a| a.checked_mul(GROUP)), deltas[2]),
                near(act_groups, deltas[3]),
                near(act_groups, deltas[4]),
            ];
            let row_len = near(Some(cols), deltas[5]);

            let x: Vec<f32> = (0..x_len).map(|i| (i % 7) as f32 - 3.0).collect();
            let (qs, d, sums) = (vec![3i8; acts_lens[0]], vec![0.5f32; acts_lens[1]], vec![96i32; acts_lens[2]]);
            let acts = Acts { qs: &qs, d: &d, sums: &sums };
            let in_matrix = rows_range.start <= rows_range.end && rows_range.end <= rows;
            let out_holds = tokens(out_stride, rows_range.end).is_some_and(|e| e <= out_len) && rows_range.end <= out_stride;
            let x_holds = tokens(x_stride, cols).is_some_and(|e| e <= x_len);
            let acts_hold = act_groups.is_some_and(|ng| {
                ng <= acts_lens[1] && ng <= acts_lens[2] && ng * GROUP <= acts_lens[0]
            });
            let sane = in_matrix && out_holds;
            for k in tiers() {
                let run = |f: &dyn Fn(&Kernels, &mut Out<'_>), reference: &dyn Fn(&mut Out<'_>)| {
                    let mut out = vec![0f32; out_len];
                    let ok = returns(|| f(k, &mut Out::new(&mut out, out_stride)));
                    let mut want = vec![0f32; out_len];
                    if ok && sane {
                        reference(&mut Out::new(&mut want, out_stride));
                    }
                    (ok, out, want)
                };
                let close = |got: &[f32], want: &[f32]| got.iter().zip(want).all(|(a, b)| (a - b).abs() <= 1e-3 * (1.0 + b.abs()));
                if kind >= 2 {
                    let (ok, got, want) = run(
                        &|k, out| (k.matmul_q)(&m, rows_range.clone(), &acts, n, out),
                        &|out| reference::matmul_q(&m, rows_range.clone(), &acts, n, out),
                    );
                    if sane && acts_hold {
                        prop_assert!(ok, "{}: matmul_q refused a call it can serve", k.tier);
                        prop_assert!(close(&got, &want), "{}: matmul_q {:?} vs reference {:?}", k.tier, got, want);
                    }
                }
                let row = vec![0f32; row_len];
                let (ok, got, want) = run(
                    &|k, out| (k.matmul_f)(&m, rows_range.clone(), &x, x_stride, n, out, &mut row.clone()),
                    &|out| reference::matmul_f(&m, rows_range.clone(), &x, x_stride, n, out, &mut vec![0f32; cols]),
                );
                if sane && x_holds && row_len >= cols {
                    prop_assert!(ok, "{}: matmul_f refused a call it can serve", k.tier);
                    prop_assert!(close(&got, &want), "{}: matmul_f {:?} vs reference {:?}", k.tier, got, want);
                }
            }
        }
    }
}
