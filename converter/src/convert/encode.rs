//! The encoder: each tensor read from the source a slab of rows at a time,
//! checked for non-finite values, stored as f32, f16 or q8/q4/q4a tiles,
//! and read back for the error statistics. It owns the buffers this takes
//! and reuses them from slab to slab and tensor to tensor, so memory stays
//! bounded by the slab size (and, for the scales, by the largest tensor's
//! rows).

use std::io::{Seek, Write};
use std::path::Path;

use ferrite_format::writer::{FileWriter, TensorSpec};
use ferrite_format::{quant, DType};
use ferrite_kernels::{reference, Matrix, Weights};
use half::f16;

use super::source::Source;
use super::{quantize, transcode};
use super::{Options, Progress, TypeStats};
use crate::error::{Error, ErrorKind, Result};
use crate::gguf::GgmlType;

/// Source elements converted per slab (bounds memory for large tensors).
const SLAB_ELEMS: usize = 1 << 18;

/// Counts a tensor of `spec` in `stats`; returns its rows, columns and
/// the rows per slab (whole row blocks, so quantized slabs tile
/// independently).
fn start_tensor(spec: &TensorSpec, stats: &mut TypeStats) -> (usize, usize, usize) {
    let [rows, cols] = [spec.shape[0] as usize, spec.shape[1] as usize];
    stats.tensors += 1;
    stats.params += (rows * cols) as u64;
    stats.bytes += spec.bytes();
    (rows, cols, (SLAB_ELEMS / cols / quant::ROW_BLOCK).max(1) * quant::ROW_BLOCK)
}

/// Non-finite source values let through (`allow_nonfinite`) in one tensor.
struct NonFinite {
    /// How many.
    count: u64,
    /// The first one's element index.
    at: usize,
    /// Its value.
    value: f32,
}

/// Turns the source's f32 values into the bytes the file stores.
pub(super) struct Encoder<'a> {
    source: &'a Source,
    /// The output, named in write errors.
    output: &'a Path,
    allow_nonfinite: bool,
    /// One slab of the source tensor as the source stores it.
    raw: Vec<u8>,
    /// The slab as f32: `[n_rows * cols]`.
    values: Vec<f32>,
    /// What the file gives back for `values` (for the error statistics):
    /// `[n_rows * cols]`.
    back: Vec<f32>,
    /// The slab as f16: `[n_rows * cols]`.
    halves: Vec<f16>,
    /// The slab's quants, row after row: `[n_rows * row_bytes]`.
    quants: Vec<u8>,
    /// The slab's scales, row after row: `[n_rows * groups]`.
    slab_scales: Vec<f16>,
    /// The slab's minimums (q4a), row after row: `[n_rows * groups]`.
    slab_mins: Vec<f16>,
    /// The slab's quants in tiles of 8 rows: `[padded_rows(n_rows) * row_bytes]`.
    tiles: Vec<u8>,
    /// The whole tensor's scales in tile order, written after its quants:
    /// `[padded rows * groups]`.
    scales: Vec<f16>,
    /// The whole tensor's minimums (q4a) in tile order, written after its
    /// scales: `[padded rows * groups]`.
    mins: Vec<f16>,
    /// Transcoding: the slab's logical planes (`transcode::Logical`).
    logical: transcode::Logical,
    /// Transcoding: the slab's tiled planes (u16 storage: f16 planes are
    /// read in place).
    slab_planes: [Vec<u16>; quant::MAX_PLANES],
    /// Transcoding: the whole tensor's tiled planes after the quants,
    /// written at its end.
    rest: [Vec<u8>; quant::MAX_PLANES],
}

impl<'a> Encoder<'a> {
    /// An encoder reading from `source`, for a conversion to `output`.
    pub(super) fn new(source: &'a Source, output: &'a Path, opts: &Options) -> Self {
        Encoder {
            source,
            output,
            allow_nonfinite: opts.allow_nonfinite,
            raw: Vec::new(),
            values: Vec::new(),
            back: Vec::new(),
            halves: Vec::new(),
            quants: Vec::new(),
            slab_scales: Vec::new(),
            slab_mins: Vec::new(),
            tiles: Vec::new(),
            scales: Vec::new(),
            mins: Vec::new(),
            logical: Default::default(),
            slab_planes: Default::default(),
            rest: Default::default(),
        }
    }

    fn out_err(&self, e: std::io::Error) -> Error {
        Error::io(self.output, e)
    }

    /// Converts source tensor `name` into `spec` and writes it whole to
    /// `writer`, slab by slab; counts it in `stats` and reports progress.
    /// With `transcode`, a GGUF tensor's blocks are re-laid as they are
    /// ([`Encoder::transcoded`]); else its values are read as f32 and
    /// stored as `spec` says. Returns the warning about the non-finite
    /// values it let through (or the blocks it requantized), if any.
    pub(super) fn tensor<W: Write + Seek>(
        &mut self,
        writer: &mut FileWriter<W>,
        spec: &TensorSpec,
        name: &str,
        transcode: bool,
        stats: &mut TypeStats,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Option<String>> {
        if let Some(ty) = self.source.gguf_type(name).filter(|_| transcode) {
            return self.transcoded(writer, spec, name, ty, stats, progress);
        }
        let (rows, cols, rows_per_slab) = start_tensor(spec, stats);
        self.scales.clear();
        self.mins.clear();
        self.rest.iter_mut().for_each(Vec::clear);
        let mut nonfinite: Option<NonFinite> = None;
        let mut row = 0;
        while row < rows {
            let n_rows = rows_per_slab.min(rows - row);
            self.source.read_f32(name, cols, row * cols, n_rows * cols, &mut self.raw, &mut self.values)?;
            self.check_finite(name, spec.dtype, row * cols, cols, &mut nonfinite)?;
            self.back.clear();
            match spec.dtype {
                DType::F32 => {
                    writer.write_chunk(bytemuck::cast_slice(&self.values)).map_err(|e| self.out_err(e))?;
                    self.back.extend_from_slice(&self.values);
                }
                DType::F16 => self.f16_slab(writer, name, row * cols)?,
                DType::Q8 | DType::Q4 | DType::Q4A => {
                    self.quantized_slab(writer, spec.dtype, name, row, n_rows, cols)?
                }
                DType::Q5_0 | DType::Q5_1 | DType::Q4K | DType::Q5K | DType::Q6K => {
                    self.logical.iter_mut().for_each(Vec::clear);
                    quantize::quantize_rows(spec.dtype, &self.values, cols, &mut self.logical).map_err(|r| {
                        Error::new(
                            ErrorKind::NonFinite,
                            format!(
                                "{}: tensor {name}: row {}: a {} scale overflows f16",
                                self.source.path_of(name).display(),
                                row + r,
                                spec.dtype.name()
                            ),
                        )
                    })?;
                    self.planes_slab(writer, name, spec.dtype, n_rows, cols)?;
                }
            }
            self.add_errors(stats);
            progress(Progress::Advance(self.source.source_bytes(name, (n_rows * cols) as u64)));
            row += n_rows;
        }
        match spec.dtype {
            DType::F32 | DType::F16 => {}
            DType::Q8 | DType::Q4 => {
                writer.write_chunk(bytemuck::cast_slice(&self.scales)).map_err(|e| self.out_err(e))?;
            }
            DType::Q4A => {
                writer.write_chunk(bytemuck::cast_slice(&self.scales)).map_err(|e| self.out_err(e))?;
                writer.write_chunk(bytemuck::cast_slice(&self.mins)).map_err(|e| self.out_err(e))?;
            }
            _ => self.end_planes(writer, spec.dtype)?,
        }
        writer.end_tensor().map_err(|e| self.out_err(e))?;
        Ok(nonfinite.map(|NonFinite { count, at, value }| {
            format!(
                "{}: tensor {name} holds {count} non-finite value(s), the first {value} at element {at} (row {}, column {}): {}",
                self.source.path_of(name).display(),
                at / cols,
                at % cols,
                if spec.dtype.is_quantized() { "quantized as 0" } else { "stored as they are" }
            )
        }))
    }

    /// Adds the slab's squared errors (`values` vs `back`) to `stats`.
    fn add_errors(&self, stats: &mut TypeStats) {
        for (x, y) in self.values.iter().zip(&self.back).filter(|(x, _)| x.is_finite()) {
            let (x, y) = (*x as f64, *y as f64);
            stats.sum_sq_err += (x - y) * (x - y);
            stats.sum_sq += x * x;
        }
    }

    /// Stores GGUF tensor `name` in `spec.dtype`, the Ferrite type that
    /// holds its ggml type exactly, by transcoding its blocks slab by slab
    /// (no dequantization: `transcode.rs`). The quants plane is written as
    /// it goes, the other planes at the end. Each slab is dequantized back
    /// (the kernels' reference) and compared with the source's values for
    /// the error statistics, which are 0 unless Q8_0 blocks holding −128
    /// were requantized; those are reported in the returned warning.
    fn transcoded<W: Write + Seek>(
        &mut self,
        writer: &mut FileWriter<W>,
        spec: &TensorSpec,
        name: &str,
        ty: GgmlType,
        stats: &mut TypeStats,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Option<String>> {
        let (rows, cols, rows_per_slab) = start_tensor(spec, stats);
        let dtype = spec.dtype;
        self.rest.iter_mut().for_each(Vec::clear);
        let (mut requantized, mut nonfinite) = (0u64, None);
        let mut row = 0;
        while row < rows {
            let n_rows = rows_per_slab.min(rows - row);
            self.source.read_raw_rows(name, row, n_rows, &mut self.raw)?;
            self.logical.iter_mut().for_each(Vec::clear);
            requantized += transcode::transcode_blocks(ty, &self.raw, &mut self.logical).map_err(|block| {
                let (per_row, _) = ty.block();
                let blocks_per_row = cols / per_row as usize;
                Error::new(
                    ErrorKind::NonFinite,
                    format!(
                        "{}: tensor {name}: row {} block {} of Q8_0 holds -128 and a scale too large to requantize \
                         within f16",
                        self.source.path_of(name).display(),
                        row + block / blocks_per_row,
                        block % blocks_per_row
                    ),
                )
            })?;
            self.planes_slab(writer, name, dtype, n_rows, cols)?;
            // The source's values, from the blocks already read.
            self.values.clear();
            crate::gguf::dequantize(ty, &self.raw, &mut self.values);
            // Stored as they are: a non-finite scale is refused unless allowed.
            self.check_finite(name, DType::F32, row * cols, cols, &mut nonfinite)?;
            self.add_errors(stats);
            progress(Progress::Advance(self.source.source_bytes(name, (n_rows * cols) as u64)));
            row += n_rows;
        }
        self.end_planes(writer, dtype)?;
        writer.end_tensor().map_err(|e| self.out_err(e))?;
        let mut notes = Vec::new();
        if requantized > 0 {
            notes.push(format!(
                "{}: tensor {name}: {requantized} Q8_0 block(s) hold -128, which q8 cannot store: requantized",
                self.source.path_of(name).display()
            ));
        }
        if let Some(NonFinite { count, at, value }) = nonfinite {
            notes.push(format!(
                "{}: tensor {name} holds {count} non-finite value(s), the first {value} at element {at}: stored as they are",
                self.source.path_of(name).display()
            ));
        }
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// Tiles the slab's logical planes (`self.logical`, `n_rows` rows of
    /// `dtype`), reads them back to f32 through the kernels' reference
    /// (into `back`, for the error statistics), writes the quants plane and
    /// keeps the others for [`Encoder::end_planes`].
    fn planes_slab<W: Write + Seek>(
        &mut self,
        writer: &mut FileWriter<W>,
        name: &str,
        dtype: DType,
        n_rows: usize,
        cols: usize,
    ) -> Result<()> {
        let internal = |what: String| Error::new(ErrorKind::Tensor, format!("{name}: {what}"));
        let planes = quant::planes(dtype);
        for (i, p) in planes.iter().enumerate() {
            let count = p.count(cols as u64).unwrap_or(0) as usize;
            let bytes = p.bytes(n_rows, cols).ok_or_else(|| internal("plane size overflows".into()))?;
            let words = &mut self.slab_planes[i];
            words.clear();
            words.resize(bytes / 2, 0);
            let pad = transcode::pad_byte(dtype, i);
            quant::tile_plane(p, &self.logical[i], n_rows, count, pad, bytemuck::cast_slice_mut(words));
        }
        // Back to f32 through the kernels, against the source's values.
        let view: [&[u8]; quant::MAX_PLANES] = core::array::from_fn(|i| bytemuck::cast_slice(&self.slab_planes[i]));
        let m = Weights::from_planes(dtype, view)
            .and_then(|w| Matrix::new(w, n_rows, cols).ok())
            .ok_or_else(|| internal(format!("{} planes do not fit [{n_rows}, {cols}]", dtype.name())))?;
        self.back.clear();
        self.back.resize(n_rows * cols, 0.0);
        for (r, out) in self.back.chunks_mut(cols).enumerate() {
            m.dequantize_row(r, out);
        }
        writer.write_chunk(bytemuck::cast_slice(&self.slab_planes[0])).map_err(|e| self.out_err(e))?;
        for i in 1..planes.len() {
            self.rest[i].extend_from_slice(bytemuck::cast_slice(&self.slab_planes[i]));
        }
        Ok(())
    }

    /// Writes a plane type's planes after its quants (kept by
    /// [`Encoder::planes_slab`]), at the tensor's end.
    fn end_planes<W: Write + Seek>(&mut self, writer: &mut FileWriter<W>, dtype: DType) -> Result<()> {
        for i in 1..quant::planes(dtype).len() {
            writer.write_chunk(&self.rest[i]).map_err(|e| self.out_err(e))?;
        }
        Ok(())
    }

    /// Refuses a non-finite value in the slab starting at element `first`
    /// unless `allow_nonfinite`; then counts them in `seen`, and replaces
    /// them by 0 for a quantized `dtype` (a group's scale then comes from
    /// its finite elements).
    fn check_finite(
        &mut self,
        name: &str,
        dtype: DType,
        first: usize,
        cols: usize,
        seen: &mut Option<NonFinite>,
    ) -> Result<()> {
        let values = &mut self.values;
        let Some(i) = values.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        let at = first + i;
        if !self.allow_nonfinite {
            return Err(Error::new(
                ErrorKind::NonFinite,
                format!(
                    "{}: tensor {name} holds {} at element {at} (row {}, column {}); \
                     --allow-nonfinite converts it anyway",
                    self.source.path_of(name).display(),
                    values[i],
                    at / cols,
                    at % cols
                ),
            ));
        }
        let count = values[i..].iter().filter(|v| !v.is_finite()).count() as u64;
        seen.get_or_insert(NonFinite { count: 0, at, value: values[i] }).count += count;
        if dtype.is_quantized() {
            // A quantized group cannot hold them: 0, and the group's
            // scale comes from its finite elements.
            for v in values[i..].iter_mut().filter(|v| !v.is_finite()) {
                *v = 0.0;
            }
        }
        Ok(())
    }

    /// Stores the slab starting at element `first` as f16.
    fn f16_slab<W: Write + Seek>(&mut self, writer: &mut FileWriter<W>, name: &str, first: usize) -> Result<()> {
        self.halves.clear();
        self.halves.extend(self.values.iter().map(|&v| f16::from_f32(v)));
        // Source NaN/inf were refused above unless allowed; a finite value
        // that overflows f16 is refused either way.
        if let Some(i) = self.halves.iter().zip(&self.values).position(|(h, v)| !h.is_finite() && v.is_finite()) {
            return Err(Error::new(
                ErrorKind::NonFinite,
                format!(
                    "{}: tensor {name} element {} ({}) overflows f16",
                    self.source.path_of(name).display(),
                    first + i,
                    self.values[i]
                ),
            ));
        }
        writer.write_chunk(bytemuck::cast_slice(&self.halves)).map_err(|e| self.out_err(e))?;
        self.back.extend(self.halves.iter().map(|v| v.to_f32()));
        Ok(())
    }

    /// Quantizes the slab of `n_rows` rows starting at row `row` as `dtype`
    /// (q8, q4 or q4a), writes its quants in tiles of 8 rows and appends
    /// its tiled scales (and minimums) to the tensor's.
    fn quantized_slab<W: Write + Seek>(
        &mut self,
        writer: &mut FileWriter<W>,
        dtype: DType,
        name: &str,
        row: usize,
        n_rows: usize,
        cols: usize,
    ) -> Result<()> {
        let row_q = quant::row_quant_bytes(dtype, cols);
        let groups = cols.div_ceil(quant::GROUP);
        self.quants.clear();
        self.quants.resize(n_rows * row_q, 0);
        self.back.resize(n_rows * cols, 0.0);
        self.slab_scales.clear();
        self.slab_scales.resize(n_rows * groups, f16::ZERO);
        self.slab_mins.clear();
        self.slab_mins.resize(n_rows * groups, f16::ZERO);
        for r in 0..n_rows {
            let src = &self.values[r * cols..(r + 1) * cols];
            let qs = &mut self.quants[r * row_q..(r + 1) * row_q];
            let sc = &mut self.slab_scales[r * groups..(r + 1) * groups];
            let dst = &mut self.back[r * cols..(r + 1) * cols];
            match dtype {
                DType::Q8 => {
                    reference::quantize_row_q8(src, qs, sc);
                    reference::dequantize_row_q8(qs, sc, dst);
                }
                DType::Q4 => {
                    reference::quantize_row_q4(src, qs, sc);
                    reference::dequantize_row_q4(qs, sc, dst);
                }
                _ => {
                    let mn = &mut self.slab_mins[r * groups..(r + 1) * groups];
                    reference::quantize_row_q4a(src, qs, sc, mn);
                    reference::dequantize_row_q4a(qs, sc, mn, dst);
                }
            }
        }
        let bad = |v: &[f16]| v.iter().position(|s| !s.is_finite());
        if let Some(i) = bad(&self.slab_scales).or(bad(&self.slab_mins)) {
            return Err(Error::new(
                ErrorKind::NonFinite,
                format!(
                    "{}: tensor {name}: row {} group {} scale or minimum overflows f16",
                    self.source.path_of(name).display(),
                    row + i / groups,
                    i % groups
                ),
            ));
        }
        // On disk: tiles of 8 rows (format/src/quant.rs).
        let padded = quant::padded_rows(n_rows);
        self.tiles.clear();
        self.tiles.resize(padded * row_q, 0);
        let first_scale = self.scales.len();
        self.scales.resize(first_scale + padded * groups, f16::ZERO);
        quant::tile_rows(
            dtype,
            &self.quants,
            &self.slab_scales,
            n_rows,
            groups,
            &mut self.tiles,
            &mut self.scales[first_scale..],
        );
        if dtype == DType::Q4A {
            // The minimums tile like the scales (the quants written by this
            // call are the same again).
            self.mins.resize(first_scale + padded * groups, f16::ZERO);
            quant::tile_rows(
                dtype,
                &self.quants,
                &self.slab_mins,
                n_rows,
                groups,
                &mut self.tiles,
                &mut self.mins[first_scale..],
            );
        }
        writer.write_chunk(&self.tiles).map_err(|e| self.out_err(e))?;
        Ok(())
    }
}
