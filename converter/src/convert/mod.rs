//! The conversion driver. [`convert`] runs the steps in order, each in a
//! file of its own:
//!
//! 1. config resolution (`config.rs`): the model record and the tokenizer
//!    section from the HF folder or the GGUF file;
//! 2. the source's tensors (`source.rs`), HF safetensors or GGUF behind
//!    one interface;
//! 3. tensor planning (`plan.rs`): which tensor is which role, shapes
//!    checked, storage types chosen ([`Options`], in `options.rs`);
//! 4. the encoder (`encode.rs`), which owns its scratch buffers and
//!    converts each tensor slab by slab;
//! 5. the atomic finish (`output.rs`): a temporary file beside the output,
//!    synced and renamed into place, and the leftovers of interrupted
//!    conversions cleaned up.

use std::collections::BTreeMap;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use ferrite_format::writer::FileWriter;
use ferrite_format::{DType, ModelConfig, Role};

use crate::error::Result;

mod config;
mod encode;
mod options;
mod output;
mod plan;
mod quantize;
mod source;
mod transcode;

use encode::Encoder;
pub use options::{KeepTypes, Mix, Options, TensorType};
use output::TempOutput;
pub use output::{temp_owner, temp_prefix, TempOwner, TEMP_SUFFIX};
use plan::TensorPlan;
pub use plan::{hf_name, role_of};
use source::Source;

/// Progress events, for a progress bar.
#[derive(Clone, Debug)]
pub enum Progress<'a> {
    /// Conversion is starting: this many source bytes will be read.
    Start {
        /// Number of tensors.
        tensors: usize,
        /// Source bytes to read.
        bytes: u64,
    },
    /// A tensor is being converted.
    Tensor {
        /// Its HF name.
        name: &'a str,
        /// Its role.
        role: Role,
    },
    /// This many more source bytes were processed.
    Advance(u64),
}

/// Totals for one storage type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeStats {
    /// Tensors of this type.
    pub tensors: usize,
    /// Elements (weights).
    pub params: u64,
    /// Bytes in the file.
    pub bytes: u64,
    /// Sum of squared (source - stored) errors.
    pub sum_sq_err: f64,
    /// Sum of squared source values.
    pub sum_sq: f64,
}

impl TypeStats {
    /// Bits per weight, scales included.
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.params as f64
        }
    }
    /// Root-mean-square error relative to the root-mean-square value.
    pub fn relative_rmse(&self) -> f64 {
        if self.sum_sq == 0.0 {
            0.0
        } else {
            (self.sum_sq_err / self.sum_sq).sqrt()
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// The output file.
    pub output: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// Per storage type.
    pub by_type: BTreeMap<DType, TypeStats>,
    /// Non-fatal findings (no tokenizer, ignored tensors, ...).
    pub warnings: Vec<String>,
    /// The config written.
    pub config: Option<ModelConfig>,
}

/// Converts the HF folder or GGUF file `input` into the Ferrite file
/// `output`. A GGUF file (`llama` or `qwen2`; F32, F16, BF16, Q8_0, Q4_0,
/// Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K tensors) goes through the same
/// pipeline as an HF folder: its metadata gives the config and tokenizer;
/// the tensors [`Options::keep`] keeps are transcoded without
/// dequantizing, the others dequantized to f32 and stored as `opts` asks.
///
/// The file is written to a temporary name beside `output` (see
/// [`temp_prefix`]) and renamed into place only after it is complete and
/// synced; on any error nothing is left behind and an existing `output` is
/// untouched. A process killed meanwhile leaves only its temporary file,
/// never a partial `output`; once the inputs are validated, a conversion
/// removes such leftovers of `output` whose process is gone and reports
/// each in [`Summary::warnings`].
pub fn convert(input: &Path, output: &Path, opts: &Options, progress: &mut dyn FnMut(Progress<'_>)) -> Result<Summary> {
    convert_with_sink(input, output, opts, progress, |file| file)
}

/// [`convert`], with the temporary file wrapped by `sink` before anything
/// is written to it (tests inject write failures this way).
pub(crate) fn convert_with_sink<W: Write + Seek>(
    input: &Path,
    output: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(Progress<'_>),
    sink: impl FnOnce(std::fs::File) -> W,
) -> Result<Summary> {
    let mut summary = Summary { output: output.to_path_buf(), ..Default::default() };
    let resolved = config::resolve(input, &mut summary.warnings)?;
    let config = resolved.config;
    let source = Source::open(input, resolved.gguf, &config, &mut summary.warnings)?;
    let plan = TensorPlan::new(input, &source, &config, opts, &mut summary.warnings)?;

    // Write to a temp file beside the target, rename on success.
    let tmp = TempOutput::create(output, &mut summary.warnings)?;
    let sink = BufWriter::with_capacity(1 << 20, sink(tmp.file()?));
    let mut writer =
        FileWriter::new(sink, &config, resolved.tokenizer.as_deref(), &plan.specs).map_err(|e| tmp.error(e))?;
    progress(Progress::Start { tensors: plan.specs.len(), bytes: plan.source_bytes(&source) });

    let mut encoder = Encoder::new(&source, output, opts);
    while let Some(spec) = writer.next_spec() {
        let name = &plan.names[&spec.role];
        progress(Progress::Tensor { name, role: spec.role });
        let stats = summary.by_type.entry(spec.dtype).or_default();
        let transcode = plan.transcoded.contains(&spec.role);
        if let Some(warning) = encoder.tensor(&mut writer, &spec, name, transcode, stats, progress)? {
            summary.warnings.push(warning);
        }
    }
    let sink = writer.finish().map_err(|e| tmp.error(e))?;
    summary.file_bytes = tmp.persist(sink)?;
    summary.config = Some(config);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::io::{self, Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};

    use ferrite_format::DType;

    use super::{convert, convert_with_sink, temp_owner, Options, TempOwner, TEMP_SUFFIX};
    use crate::ErrorKind;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny").join(name)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// A sink that fails like a full disk: with ENOSPC once `limit` bytes
    /// are reached. `Extent`: the file may not grow past `limit` bytes (a
    /// disk that is full; rewriting bytes already written still works).
    /// `Total`: `limit` bytes of writes in all, wherever they go (a device
    /// that fails mid-way, also during the final header rewrite). The write
    /// that reaches the limit is partial, as `write(2)` on a full disk.
    struct FullDisk {
        inner: std::fs::File,
        mode: Mode,
        limit: u64,
        pos: u64,
        written: u64,
    }

    #[derive(Clone, Copy, Debug)]
    enum Mode {
        Extent,
        Total,
    }

    impl FullDisk {
        fn new(inner: std::fs::File, mode: Mode, limit: u64) -> Self {
            FullDisk { inner, mode, limit, pos: 0, written: 0 }
        }
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let used = match self.mode {
                Mode::Extent => self.pos,
                Mode::Total => self.written,
            };
            let room = self.limit.saturating_sub(used);
            if room == 0 && !buf.is_empty() {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = (buf.len() as u64).min(room) as usize;
            let n = self.inner.write(&buf[..n])?;
            self.pos += n as u64;
            self.written += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.pos = self.inner.seek(pos)?;
            Ok(self.pos)
        }
    }

    /// A disk that fills after N bytes, for N from 0 to one byte short of
    /// the whole file (in the header, the directory, at and around the 1 MiB
    /// buffer's flushes, in the last tensor; and, counting every byte
    /// written, in the final header and directory rewrite): an I/O error
    /// naming the output, and neither the output nor a temp file left
    /// behind; an existing output stays as it was.
    #[test]
    fn a_disk_that_fills_up_leaves_no_output_and_no_temp_file() {
        let input = fixture("llama-tied-bf16");
        let opts = Options { weights: DType::F32, ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("reference.frt");
        let summary = convert(&input, &reference, &opts, &mut |_| {}).unwrap();
        let size = summary.file_bytes;
        assert!(size > 2 << 20, "the file ({size} bytes) should span several 1 MiB buffer flushes");
        let expected = std::fs::read(&reference).unwrap();
        // What `finish` rewrites at the end: the header and the directory.
        let n_tensors = summary.by_type.values().map(|s| s.tensors as u64).sum::<u64>();
        let rewrite = 128 + 64 * n_tensors;

        let out_dir = tempfile::tempdir().unwrap();
        let output = out_dir.path().join("model.frt");
        let mib = 1u64 << 20;
        let mut cases: Vec<(Mode, u64)> =
            [0, 1, 127, 128, 384, 4096, mib - 1, mib, mib + 1, 2 * mib + 7, size / 2, size - 64, size - 1]
                .into_iter()
                .map(|n| (Mode::Extent, n))
                .collect();
        cases.extend([size, size + 1, size + 127, size + rewrite - 1].map(|n| (Mode::Total, n)));
        for (mode, limit) in cases {
            let err = convert_with_sink(&input, &output, &opts, &mut |_| {}, |f| FullDisk::new(f, mode, limit))
                .err()
                .unwrap_or_else(|| panic!("{mode:?} {limit} of {size} bytes: the conversion succeeded"));
            let msg = err.to_string();
            assert_eq!(err.kind(), ErrorKind::Io, "{mode:?} {limit}: {msg}");
            assert!(
                msg.contains(&output.display().to_string()),
                "{mode:?} {limit}: the message names no output: {msg}"
            );
            assert!(msg.contains("os error 28"), "{mode:?} {limit}: not the ENOSPC error: {msg}");
            assert!(names(out_dir.path()).is_empty(), "{mode:?} {limit}: left {:?}", names(out_dir.path()));
        }

        // Replacing an existing file: it stays intact.
        std::fs::write(&output, b"the previous model").unwrap();
        for (mode, limit) in [(Mode::Extent, 0), (Mode::Extent, mib), (Mode::Extent, size - 1), (Mode::Total, size)] {
            let r = convert_with_sink(&input, &output, &opts, &mut |_| {}, |f| FullDisk::new(f, mode, limit));
            assert!(r.is_err(), "{mode:?} {limit}: succeeded");
            assert_eq!(std::fs::read(&output).unwrap(), b"the previous model", "{mode:?} {limit}: the output changed");
            assert_eq!(names(out_dir.path()), ["model.frt"], "{mode:?} {limit}: leftovers");
        }

        // Room for exactly the file: it succeeds, byte-identical (the hook
        // itself changes nothing).
        for (mode, limit) in [(Mode::Extent, size), (Mode::Total, size + rewrite)] {
            convert_with_sink(&input, &output, &opts, &mut |_| {}, |f| FullDisk::new(f, mode, limit))
                .unwrap_or_else(|e| panic!("{mode:?} {limit}: {e}"));
            assert!(std::fs::read(&output).unwrap() == expected, "{mode:?}: the file written through the hook differs");
            assert_eq!(names(out_dir.path()), ["model.frt"]);
        }
    }

    #[test]
    fn temp_names_say_which_output_and_process_they_belong_to() {
        let out = Path::new("/models/m.frt");
        let t = |s: &str| temp_owner(out, s);
        assert_eq!(t(".m.frt.1234.aB3xYz.ferrite-tmp"), Some(TempOwner::Pid(1234)));
        assert_eq!(t(".m.frt.aB3xYz.ferrite-tmp"), Some(TempOwner::Unknown));
        // Not temp files of m.frt.
        for other in [
            "m.frt",
            ".m.frt.1234.aB3xYz.ferrite-tmp.bak",
            ".m.frt.ferrite-tmp",
            ".m.frt..ferrite-tmp",
            ".m.frt.1234..ferrite-tmp",
            ".m.frt.12a4.aB3xYz.ferrite-tmp",
            ".m.frt.99999999999.aB3xYz.ferrite-tmp",
            ".m.frt.x.1234.aB3xYz.ferrite-tmp",     // a temp of `m.frt.x`
            ".m.frt.1.frt.1234.aB3xYz.ferrite-tmp", // a temp of `m.frt.1.frt`
            ".n.frt.1234.aB3xYz.ferrite-tmp",
        ] {
            assert_eq!(t(other), None, "{other}");
        }
        assert!(TEMP_SUFFIX.starts_with('.'));
    }
}
