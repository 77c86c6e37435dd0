use bytemuck::{Pod, Zeroable};

/// The eight magic bytes every Ferrite file starts with.
pub const MAGIC: [u8; 8] = *b"FERRITE\0";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 4;
/// Written as a native `u32`; reads back as this value only on a matching
/// (little-endian) machine.
pub const ENDIAN_CHECK: u32 = 0x0102_0304;
/// Alignment of the tokenizer section, the data section and every tensor,
/// in bytes from the file start. The reader requires the buffer start to be
/// aligned to this as well, so tensor views are aligned in memory.
pub const ALIGN: usize = 64;
/// Size of [`Header`] in bytes.
pub const HEADER_SIZE: usize = 128;

/// The fixed-size file header at offset 0. See `SPEC.md` § Header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// [`ENDIAN_CHECK`].
    pub endian: u32,
    /// Size of this header: [`HEADER_SIZE`].
    pub header_size: u32,
    /// Size of the [`crate::ModelConfig`] record: 256.
    pub config_size: u32,
    /// Total file size in bytes.
    pub file_size: u64,
    /// Offset of the config record (= `header_size`).
    pub config_offset: u64,
    /// Offset of the tensor directory (= `config_offset + config_size`).
    pub dir_offset: u64,
    /// Number of directory entries.
    pub n_tensors: u32,
    /// Size of one directory entry: [`crate::DIR_ENTRY_SIZE`].
    pub dir_entry_size: u32,
    /// Offset of the tokenizer section (multiple of [`ALIGN`]); 0 if absent.
    pub tok_offset: u64,
    /// Size of the tokenizer section in bytes; 0 if absent.
    pub tok_size: u64,
    /// Offset of the tensor data section (multiple of [`ALIGN`]).
    pub data_offset: u64,
    /// Size of the tensor data section.
    pub data_size: u64,
    /// Quantization group size (elements per scale): 32, the only value so far.
    pub group_size: u32,
    /// CRC-32 of the tokenizer section; 0 if absent.
    pub tok_crc: u32,
    /// Reserved, zero.
    pub reserved: [u8; 28],
    /// CRC-32 over header bytes `0..124`, then the config record, then the directory.
    pub meta_crc: u32,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);
