use core::fmt;

/// Every way a Ferrite file can fail to parse or validate.
///
/// Each variant carries a static `what` naming the field or section, so the
/// message says where the file is wrong without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than a structure it must contain.
    Truncated {
        /// The structure that did not fit.
        what: &'static str,
        /// Bytes it needs (end offset).
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The first eight bytes are not `FERRITE\0`.
    BadMagic,
    /// The endianness marker is byte-swapped or garbage.
    BadEndianness {
        /// The value found.
        found: u32,
    },
    /// The file's format version is not the one this reader implements.
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this reader reads.
        supported: u32,
    },
    /// The buffer start is not aligned as the reader requires.
    Misaligned {
        /// What was misaligned.
        what: &'static str,
        /// Its address or offset.
        address: usize,
        /// The alignment it needs.
        required: usize,
    },
    /// A size or offset field does not hold the value the layout requires.
    BadLayout {
        /// The field.
        what: &'static str,
        /// The value found.
        found: u64,
        /// The value expected.
        expected: u64,
    },
    /// An offset + length lies (partly) outside its section or the file.
    OutOfBounds {
        /// The region.
        what: &'static str,
        /// Its start offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The limit it must stay below.
        limit: u64,
    },
    /// An arithmetic product or sum overflowed (hostile sizes).
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
    /// The header + config + directory checksum does not match.
    MetaChecksum {
        /// Stored checksum.
        stored: u32,
        /// Computed checksum.
        computed: u32,
    },
    /// The tokenizer section checksum does not match.
    TokenizerChecksum {
        /// Stored checksum.
        stored: u32,
        /// Computed checksum.
        computed: u32,
    },
    /// A tensor's data checksum does not match (only checked on demand).
    TensorChecksum {
        /// The tensor's index in the directory.
        index: u32,
        /// Stored checksum.
        stored: u32,
        /// Computed checksum.
        computed: u32,
    },
    /// An enumerated field holds a value with no meaning.
    BadEnum {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u32,
    },
    /// A configuration value is out of its valid range.
    BadConfig {
        /// The field.
        what: &'static str,
        /// Why it is invalid.
        why: &'static str,
    },
    /// A tensor's shape does not match the configuration.
    BadShape {
        /// The tensor's index in the directory.
        index: u32,
        /// Expected `[rows, cols]`.
        expected: [u32; 2],
        /// Found `[rows, cols]`.
        found: [u32; 2],
    },
    /// A weight type is not allowed for this tensor (e.g. a quantized norm,
    /// or a K type on rows that are not a multiple of 256).
    BadDType {
        /// The tensor's index in the directory.
        index: u32,
        /// The type found.
        dtype: u32,
    },
    /// The directory is not sorted by role, or names one role twice.
    DirectoryOrder {
        /// Index of the offending entry.
        index: u32,
    },
    /// A tensor that the configuration requires is absent.
    MissingTensor {
        /// Raw role kind.
        kind: u32,
        /// Layer, for per-layer roles.
        layer: u32,
    },
    /// A tensor that the configuration forbids is present (e.g. a bias
    /// without the bias flag, or an output table in a tied model).
    UnexpectedTensor {
        /// Index of the entry.
        index: u32,
    },
    /// Two tensors' data overlap, or are not in directory order.
    TensorOrder {
        /// Index of the offending entry.
        index: u32,
    },
    /// A tokenizer table is malformed.
    BadTokenizer {
        /// The table.
        what: &'static str,
        /// The index inside it.
        index: u32,
    },
    /// The file has no tokenizer section.
    NoTokenizer,
    /// A reserved field is not zero.
    ReservedNotZero {
        /// The structure holding it.
        what: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { what, needed, available } => write!(
                f,
                "file truncated: {what} needs {needed} bytes but only {available} are present"
            ),
            Error::BadMagic => write!(f, "not a Ferrite file (bad magic bytes; expected \"FERRITE\\0\")"),
            Error::BadEndianness { found } => write!(
                f,
                "bad endianness marker {found:#010x} (was this written on a big-endian machine, or corrupted?)"
            ),
            Error::UnsupportedVersion { found, supported } => {
                if found > supported {
                    write!(f, "file format version {found} is newer than this reader's ({supported}); upgrade Ferrite")
                } else {
                    write!(f, "file format version {found} is older than this reader's ({supported}); convert the model again")
                }
            }
            Error::Misaligned { what, address, required } => write!(
                f,
                "{what} at {address:#x} is not aligned to {required} bytes (map the file, or wrap embedded bytes in an aligned type)"
            ),
            Error::BadLayout { what, found, expected } => {
                write!(f, "bad layout: {what} is {found}, expected {expected}")
            }
            Error::OutOfBounds { what, offset, len, limit } => write!(
                f,
                "{what} at offset {offset} with length {len} runs past {limit}"
            ),
            Error::Overflow { what } => write!(f, "size overflow computing {what}"),
            Error::MetaChecksum { stored, computed } => write!(
                f,
                "header/config/directory checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): file corrupted"
            ),
            Error::TokenizerChecksum { stored, computed } => write!(
                f,
                "tokenizer checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): file corrupted"
            ),
            Error::TensorChecksum { index, stored, computed } => write!(
                f,
                "tensor #{index} checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): data corrupted"
            ),
            Error::BadEnum { what, value } => write!(f, "invalid {what} value {value}"),
            Error::BadConfig { what, why } => write!(f, "invalid config {what}: {why}"),
            Error::BadShape { index, expected, found } => write!(
                f,
                "tensor #{index} has shape {found:?}, the config implies {expected:?}"
            ),
            Error::BadDType { index, dtype } => {
                write!(f, "tensor #{index} has weight type {dtype}, not allowed for its role or shape")
            }
            Error::DirectoryOrder { index } => write!(
                f,
                "directory entry #{index} is out of role order or duplicates a role"
            ),
            Error::MissingTensor { kind, layer } => {
                write!(f, "missing tensor of role kind {kind} (layer {layer})")
            }
            Error::UnexpectedTensor { index } => write!(
                f,
                "directory entry #{index} names a tensor the config does not allow"
            ),
            Error::TensorOrder { index } => write!(
                f,
                "tensor #{index} data overlaps the previous tensor or is out of order"
            ),
            Error::BadTokenizer { what, index } => {
                write!(f, "malformed tokenizer table {what} at index {index}")
            }
            Error::NoTokenizer => write!(f, "this file has no tokenizer"),
            Error::ReservedNotZero { what } => write!(f, "reserved bytes in {what} are not zero"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
