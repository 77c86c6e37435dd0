//! The Ferrite model file format (`.frt`).
//!
//! One little-endian file holds a model's configuration, its tokenizer and
//! its weights. Reading is zero-copy, `no_std` and allocation-free: a
//! [`File`] borrows the bytes (a memory map, or a `&'static [u8]` on a
//! device) and hands out typed views of each tensor, addressed by [`Role`].
//! Every offset, size and product is checked, so untrusted bytes produce an
//! [`Error`], never a panic or undefined behaviour.
//!
//! The byte-level specification is `format/SPEC.md`; this crate is its
//! executable form. The writer (feature `std`) is used by the converter.
//!
//! ```no_run
//! # fn demo(bytes: &[u8]) -> Result<(), ferrite_format::Error> {
//! let file = ferrite_format::File::parse(bytes)?;
//! let embed = file.tensor(ferrite_format::Role::Embedding)?;
//! assert_eq!(embed.rows, file.config().vocab_size);
//! # Ok(()) }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

/// Declares a field-less enum stored as a `$repr` number, with `decode`
/// (the inverse of `as $repr`), so that each variant's number is written
/// once; with `as "what"` also `from_u32`, the decoding that names `what`
/// in its error. Variants written `Variant = 1 => "name",` and a trailing
/// `fn name_fn;` also give `name_fn(self) -> &'static str`, each variant's
/// name beside its number.
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident $(as $what:literal)? {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal => $vname:literal,)+
        }
        $(#[$fmeta:meta])*
        fn $name_fn:ident;
    ) => {
        stored_enum! {
            $(#[$meta])*
            pub enum $name: $repr $(as $what)? {
                $($(#[$vmeta])* $variant = $value,)+
            }
        }

        impl $name {
            $(#[$fmeta])*
            pub fn $name_fn(self) -> &'static str {
                match self {
                    $(Self::$variant => $vname,)+
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident $(as $what:literal)? {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// The variant stored as `value`, if there is one.
            pub const fn decode(value: $repr) -> Option<Self> {
                match value {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }

            $(
                /// Decodes the stored value.
                pub fn from_u32(value: u32) -> Result<Self, $crate::Error> {
                    Self::decode(value).ok_or($crate::Error::BadEnum { what: $what, value })
                }
            )?
        }
    };
}

mod config;
mod error;
mod header;
pub mod quant;
mod reader;
mod tensor;
pub mod tokenizer;
#[cfg(feature = "std")]
pub mod writer;

pub use config::{Arch, ModelConfig, RopeScaling, MAX_STOP_IDS};
pub use error::Error;
pub use header::{Header, ALIGN, ENDIAN_CHECK, HEADER_SIZE, MAGIC, VERSION};
pub use reader::{File, TensorView};
pub use tensor::{DType, DirEntry, LayerRole, Role, DIR_ENTRY_SIZE};
pub use tokenizer::{TokenizerView, TOKENIZER_HEADER_SIZE};

/// Checksum used everywhere in the format: CRC-32 (IEEE 802.3 polynomial).
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Rounds `n` up to a multiple of `align` (a power of two), or `None` on overflow.
pub const fn align_up(n: u64, align: u64) -> Option<u64> {
    match n.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}
