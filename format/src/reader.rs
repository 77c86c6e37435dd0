use half::f16;

use crate::{
    checksum, quant, tensor::DIR_ENTRY_SIZE, DType, DirEntry, Error, Header, ModelConfig, Role, TokenizerView, ALIGN,
    ENDIAN_CHECK, HEADER_SIZE, MAGIC, VERSION,
};

/// A parsed, validated Ferrite file borrowing its bytes.
///
/// Parsing checks the header, the config record, the directory (every
/// offset, size, shape and type against the config) and the tokenizer
/// tables, and verifies the header/directory and tokenizer checksums. Tensor
/// data checksums are verified on demand ([`File::verify_tensors`]), since
/// reading every byte defeats memory mapping.
#[derive(Clone, Copy, Debug)]
pub struct File<'a> {
    bytes: &'a [u8],
    header: Header,
    config: ModelConfig,
    directory: &'a [DirEntry],
    tokenizer: Option<TokenizerView<'a>>,
}

/// A zero-copy view of one tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Index in the directory.
    pub index: u32,
    /// Its role.
    pub role: Role,
    /// Storage type.
    pub dtype: DType,
    /// Rows (or vector length).
    pub rows: u32,
    /// Columns (1 for vectors).
    pub cols: u32,
    /// The raw data, `dtype.tensor_bytes(rows, cols)` bytes, 64-byte aligned.
    pub data: &'a [u8],
    /// Stored CRC-32 of `data`.
    pub crc: u32,
}

impl<'a> TensorView<'a> {
    /// The data as `f32`s, if the type is f32.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if self.dtype != DType::F32 {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }
    /// The data as `f16`s, if the type is f16.
    pub fn as_f16(&self) -> Option<&'a [f16]> {
        if self.dtype != DType::F16 {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }
    /// For q8/q4/q4a: `(quants, scales)` planes (see [`crate::quant`]); a
    /// q4a tensor's minimums are [`TensorView::mins`]. The other quantized
    /// types: [`TensorView::planes`].
    pub fn quant_planes(&self) -> Option<(&'a [u8], &'a [f16])> {
        if !matches!(self.dtype, DType::Q8 | DType::Q4 | DType::Q4A) {
            return None;
        }
        let (rows, cols) = (self.rows as usize, self.cols as usize);
        let split = quant::scales_offset(self.dtype, rows, cols);
        let (qs, rest) = self.data.split_at_checked(split)?;
        let scales = rest.get(..quant::padded_rows(rows).checked_mul(cols.div_ceil(quant::GROUP))?.checked_mul(2)?)?;
        Some((qs, bytemuck::try_cast_slice(scales).ok()?))
    }
    /// For any quantized type: its planes in [`quant::planes`]' order (the
    /// entries past them are empty).
    pub fn planes(&self) -> Option<[&'a [u8]; quant::MAX_PLANES]> {
        if !self.dtype.is_quantized() {
            return None;
        }
        quant::split_planes(self.dtype, self.data, self.rows as usize, self.cols as usize)
    }
    /// For q4a: the minimums plane, one f16 per group (see [`crate::quant`]).
    pub fn mins(&self) -> Option<&'a [f16]> {
        if self.dtype != DType::Q4A {
            return None;
        }
        let mins = self.data.get(quant::mins_offset(self.rows as usize, self.cols as usize)..)?;
        bytemuck::try_cast_slice(mins).ok()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows as usize * self.cols as usize
    }
    /// Whether the tensor has no elements (never true in a valid file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Recomputes the data checksum.
    pub fn verify(&self) -> Result<(), Error> {
        let computed = checksum(self.data);
        if computed != self.crc {
            return Err(Error::TensorChecksum { index: self.index, stored: self.crc, computed });
        }
        Ok(())
    }
}

fn region(what: &'static str, offset: u64, len: u64, limit: u64) -> Result<core::ops::Range<usize>, Error> {
    let end = offset.checked_add(len).ok_or(Error::Overflow { what })?;
    if end > limit {
        return Err(Error::OutOfBounds { what, offset, len, limit });
    }
    Ok(offset as usize..end as usize)
}

fn expect(what: &'static str, found: u64, expected: u64) -> Result<(), Error> {
    if found != expected {
        return Err(Error::BadLayout { what, found, expected });
    }
    Ok(())
}

impl<'a> File<'a> {
    /// Parses and validates `bytes`, which must start on an [`ALIGN`]-byte
    /// boundary (a mapped file does; embedded bytes need an aligned wrapper).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if !(bytes.as_ptr() as usize).is_multiple_of(ALIGN) {
            return Err(Error::Misaligned {
                what: "model buffer start",
                address: bytes.as_ptr() as usize,
                required: ALIGN,
            });
        }
        let total = bytes.len() as u64;
        if bytes.len() < HEADER_SIZE {
            return Err(Error::Truncated { what: "header", needed: HEADER_SIZE as u64, available: total });
        }
        let header: Header = bytemuck::pod_read_unaligned(&bytes[..HEADER_SIZE]);
        if header.magic != MAGIC {
            return Err(Error::BadMagic);
        }
        if header.endian != ENDIAN_CHECK {
            return Err(Error::BadEndianness { found: header.endian });
        }
        if header.version != VERSION {
            return Err(Error::UnsupportedVersion { found: header.version, supported: VERSION });
        }
        expect("header_size", header.header_size as u64, HEADER_SIZE as u64)?;
        expect("config_size", header.config_size as u64, ModelConfig::SIZE as u64)?;
        expect("dir_entry_size", header.dir_entry_size as u64, DIR_ENTRY_SIZE as u64)?;
        expect("config_offset", header.config_offset, HEADER_SIZE as u64)?;
        expect("dir_offset", header.dir_offset, (HEADER_SIZE + ModelConfig::SIZE) as u64)?;
        expect("group_size", header.group_size as u64, quant::GROUP as u64)?;
        if header.reserved.iter().any(|&b| b != 0) {
            return Err(Error::ReservedNotZero { what: "header" });
        }
        if header.file_size != total {
            return Err(if header.file_size > total {
                Error::Truncated { what: "file (header file_size)", needed: header.file_size, available: total }
            } else {
                Error::BadLayout { what: "file_size", found: header.file_size, expected: total }
            });
        }
        let dir_len = (header.n_tensors as u64)
            .checked_mul(DIR_ENTRY_SIZE as u64)
            .ok_or(Error::Overflow { what: "directory size" })?;
        let config_range = region("config", header.config_offset, ModelConfig::SIZE as u64, total)?;
        let dir_range = region("directory", header.dir_offset, dir_len, total)?;

        // Checksum before interpreting anything beyond the header, so random
        // corruption is reported as corruption.
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[..HEADER_SIZE - 4]);
        hasher.update(&bytes[config_range.clone()]);
        hasher.update(&bytes[dir_range.clone()]);
        let computed = hasher.finalize();
        if computed != header.meta_crc {
            return Err(Error::MetaChecksum { stored: header.meta_crc, computed });
        }

        let config: ModelConfig = bytemuck::pod_read_unaligned(&bytes[config_range]);
        config.validate()?;

        // The directory starts at 384, a multiple of 8: aligned for `DirEntry`
        // since the buffer start is 64-aligned.
        let directory: &[DirEntry] =
            bytemuck::try_cast_slice(&bytes[dir_range.clone()]).map_err(|_| Error::Misaligned {
                what: "directory",
                address: bytes.as_ptr() as usize + dir_range.start,
                required: core::mem::align_of::<DirEntry>(),
            })?;

        // Sections: tokenizer (optional) then data, each ALIGN-aligned, after the directory.
        let dir_end = dir_range.end as u64;
        let mut cursor = dir_end;
        let tokenizer = if header.tok_size == 0 {
            expect("tok_offset (no tokenizer)", header.tok_offset, 0)?;
            expect("tok_crc (no tokenizer)", header.tok_crc as u64, 0)?;
            None
        } else {
            // Sections are packed: each starts at the next ALIGN boundary.
            let expected = crate::align_up(dir_end, ALIGN as u64).ok_or(Error::Overflow { what: "tok_offset" })?;
            expect("tok_offset", header.tok_offset, expected)?;
            let range = region("tokenizer section", header.tok_offset, header.tok_size, total)?;
            cursor = range.end as u64;
            let section = &bytes[range];
            let computed = checksum(section);
            if computed != header.tok_crc {
                return Err(Error::TokenizerChecksum { stored: header.tok_crc, computed });
            }
            Some(TokenizerView::parse(section, config.vocab_size)?)
        };
        let expected = crate::align_up(cursor, ALIGN as u64).ok_or(Error::Overflow { what: "data_offset" })?;
        expect("data_offset", header.data_offset, expected)?;
        let data_range = region("data section", header.data_offset, header.data_size, total)?;
        // The data section runs to the end of the file.
        expect("data_size", header.data_offset + header.data_size, total)?;

        Self::validate_directory(directory, &config, data_range.start as u64, data_range.end as u64)?;
        Ok(File { bytes, header, config, directory, tokenizer })
    }

    fn validate_directory(
        directory: &[DirEntry],
        config: &ModelConfig,
        data_start: u64,
        data_end: u64,
    ) -> Result<(), Error> {
        let mut prev_key = None;
        let mut prev_end = data_start;
        for (i, e) in directory.iter().enumerate() {
            let index = i as u32;
            let role = e.role()?;
            let dtype = e.dtype()?;
            if let Role::Layer(layer, _) = role {
                if layer >= config.n_layers {
                    return Err(Error::BadEnum { what: "tensor layer", value: layer });
                }
            }
            let key = role.sort_key();
            if prev_key.is_some_and(|p| p >= key) {
                return Err(Error::DirectoryOrder { index });
            }
            prev_key = Some(key);
            if !role.required(config) {
                return Err(Error::UnexpectedTensor { index });
            }
            let expected = role.expected_shape(config);
            let n_dims = if role.is_vector() { 1 } else { 2 };
            if e.n_dims != n_dims || [e.rows, e.cols] != expected {
                return Err(Error::BadShape { index, expected, found: [e.rows, e.cols] });
            }
            // Vectors (norms, biases) are f32; matrices any type, but the
            // K types need whole super-blocks of 256 per row.
            if (role.is_vector() && dtype != DType::F32)
                || (dtype.is_k_quant() && !(e.cols as usize).is_multiple_of(quant::SUPER))
            {
                return Err(Error::BadDType { index, dtype: e.dtype });
            }
            let size =
                dtype.tensor_bytes(e.rows as u64, e.cols as u64).ok_or(Error::Overflow { what: "tensor size" })?;
            expect("tensor size", e.size, size)?;
            // Tensors are packed in directory order, each at the next ALIGN
            // boundary: no gaps, no overlap, no unchecked bytes.
            let expected_offset =
                crate::align_up(prev_end, ALIGN as u64).ok_or(Error::Overflow { what: "tensor offset" })?;
            if e.offset < expected_offset {
                return Err(Error::TensorOrder { index });
            }
            expect("tensor offset", e.offset, expected_offset)?;
            let end = e.offset.checked_add(e.size).ok_or(Error::Overflow { what: "tensor end" })?;
            if end > data_end {
                return Err(Error::OutOfBounds { what: "tensor data", offset: e.offset, len: e.size, limit: data_end });
            }
            prev_end = end;
            if e.reserved.iter().any(|&b| b != 0) {
                return Err(Error::ReservedNotZero { what: "directory entry" });
            }
        }
        let expected_end = crate::align_up(prev_end, ALIGN as u64).ok_or(Error::Overflow { what: "data end" })?;
        expect("data section end", data_end, expected_end)?;
        // Every required role present: the directory is sorted and has no
        // forbidden or duplicate roles, so walk the required list alongside.
        let mut required = 0usize;
        let mut check = |role: Role| -> Result<(), Error> {
            if !role.required(config) {
                return Ok(());
            }
            required += 1;
            let key = role.sort_key();
            if directory
                .binary_search_by(|e| e.role().map(|r| r.sort_key()).unwrap_or((u64::MAX, 0)).cmp(&key))
                .is_err()
            {
                let (kind, layer) = role.to_raw();
                return Err(Error::MissingTensor { kind, layer });
            }
            Ok(())
        };
        check(Role::Embedding)?;
        check(Role::OutputNorm)?;
        check(Role::Output)?;
        for layer in 0..config.n_layers {
            for r in crate::LayerRole::ALL {
                check(Role::Layer(layer, r))?;
            }
        }
        Ok(())
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// The raw directory.
    pub fn directory(&self) -> &'a [DirEntry] {
        self.directory
    }
    /// The tokenizer, if the file has one.
    pub fn tokenizer(&self) -> Option<&TokenizerView<'a>> {
        self.tokenizer.as_ref()
    }
    /// Number of tensors.
    pub fn n_tensors(&self) -> usize {
        self.directory.len()
    }

    /// The tensor at directory index `index`.
    pub fn tensor_at(&self, index: usize) -> Result<TensorView<'a>, Error> {
        let e = self.directory.get(index).ok_or(Error::BadEnum { what: "tensor index", value: index as u32 })?;
        // Bounds were validated in `parse`; recheck cheaply rather than trust.
        let range = region("tensor data", e.offset, e.size, self.bytes.len() as u64)?;
        Ok(TensorView {
            index: index as u32,
            role: e.role()?,
            dtype: e.dtype()?,
            rows: e.rows,
            cols: e.cols,
            data: &self.bytes[range],
            crc: e.crc,
        })
    }

    /// The tensor for `role`. [`Role::Output`] resolves to the embedding
    /// table when embeddings are tied.
    pub fn tensor(&self, role: Role) -> Result<TensorView<'a>, Error> {
        let role = if role == Role::Output && self.config.tied_embeddings() { Role::Embedding } else { role };
        let key = role.sort_key();
        let index = self
            .directory
            .binary_search_by(|e| e.role().map(|r| r.sort_key()).unwrap_or((u64::MAX, 0)).cmp(&key))
            .map_err(|_| {
                let (kind, layer) = role.to_raw();
                Error::MissingTensor { kind, layer }
            })?;
        self.tensor_at(index)
    }

    /// Verifies every tensor's checksum; the first mismatch is the error.
    pub fn verify_tensors(&self) -> Result<(), Error> {
        for i in 0..self.directory.len() {
            self.tensor_at(i)?.verify()?;
        }
        Ok(())
    }
}
