//! The atomic finish: the output is written to a temporary file beside
//! it, synced and renamed into place once complete; the temporary files
//! of interrupted conversions are recognised by name and removed once
//! their process is gone.

use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// The temporary file a conversion writes beside its output: renamed into
/// place by [`TempOutput::persist`], removed if dropped before that (on
/// any error).
pub(super) struct TempOutput<'p> {
    tmp: NamedTempFile,
    output: &'p Path,
}

impl<'p> TempOutput<'p> {
    /// Removes the leftovers of interrupted conversions to `output` (see
    /// [`remove_stale_temps`]; reported in `warnings`), then creates this
    /// conversion's temporary file beside it.
    pub(super) fn create(output: &'p Path, warnings: &mut Vec<String>) -> Result<Self> {
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        remove_stale_temps(&dir, output, warnings);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}{}.", temp_prefix(output), std::process::id()))
            .suffix(TEMP_SUFFIX)
            .tempfile_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        Ok(TempOutput { tmp, output })
    }

    /// An I/O error while writing, named after the output.
    pub(super) fn error(&self, e: std::io::Error) -> Error {
        Error::io(self.output, e)
    }

    /// A second handle on the temporary file, for the writer.
    pub(super) fn file(&self) -> Result<std::fs::File> {
        self.tmp.as_file().try_clone().map_err(|e| self.error(e))
    }

    /// Flushes and closes `sink` (the writer over [`TempOutput::file`]),
    /// syncs the file, makes it readable like any data file and renames it
    /// to the output. Returns the file's size.
    pub(super) fn persist<W: Write>(self, mut sink: W) -> Result<u64> {
        let out_err = |e: std::io::Error| Error::io(self.output, e);
        sink.flush().map_err(out_err)?;
        drop(sink);
        let file = self.tmp.as_file();
        file.sync_all().map_err(out_err)?;
        let file_bytes = file.metadata().map_err(out_err)?.len();
        {
            use std::os::unix::fs::PermissionsExt;
            // Temp files are created 0600; a model file is ordinary data.
            std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(out_err)?;
        }
        self.tmp.persist(self.output).map_err(|e| out_err(e.error))?;
        Ok(file_bytes)
    }
}

/// Start of the names of the temporary files written beside `output`.
///
/// A conversion writes `.{name}.{pid}.{random}.ferrite-tmp` beside
/// `output` (`name` its file name, `pid` the converting process's id,
/// `random` six alphanumeric characters) and renames it to `output` once it
/// is complete. A process killed meanwhile leaves that file behind: its
/// name says which output and which process it belongs to, and the next
/// conversion to the same output removes it once that process is gone (see
/// [`convert`](super::convert)).
pub fn temp_prefix(output: &Path) -> String {
    let name = output.file_name().and_then(|n| n.to_str()).unwrap_or("model.frt");
    format!(".{name}.")
}

/// Suffix of temporary files.
pub const TEMP_SUFFIX: &str = ".ferrite-tmp";

/// Who wrote a temporary file of some output, as its name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TempOwner {
    /// The process with this id (`.{name}.{pid}.{random}.ferrite-tmp`).
    Pid(u32),
    /// Unknown: a name without a process id (`.{name}.{random}.ferrite-tmp`,
    /// written by converters before the id was added).
    Unknown,
}

/// If `file_name` is the name of a temporary file of `output`, who wrote it.
///
/// Only names this converter makes match: the output's
/// [`temp_prefix`], then `{pid}.{random}` or `{random}` (`random`
/// alphanumeric), then [`TEMP_SUFFIX`]. So the temp files of an output named
/// `m.frt` are never mistaken for those of `m.frt.1.frt`, and no other file
/// matches.
pub fn temp_owner(output: &Path, file_name: &str) -> Option<TempOwner> {
    let middle = file_name.strip_prefix(temp_prefix(output).as_str())?.strip_suffix(TEMP_SUFFIX)?;
    let alnum = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    match middle.split_once('.') {
        Some((pid, random)) if alnum(random) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            pid.parse().ok().map(TempOwner::Pid)
        }
        Some(_) => None,
        None if alnum(middle) => Some(TempOwner::Unknown),
        None => None,
    }
}

/// Whether the process `pid` is running, where that can be known: `/proc`
/// on Linux; `None` elsewhere. A zombie counts as running.
fn process_alive(pid: u32) -> Option<bool> {
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Some(Path::new("/proc").join(pid.to_string()).exists())
    } else {
        None
    }
}

/// Removes the temporary files of `output` in `dir` left by conversions
/// whose process is gone (killed, or the machine lost power); reports each
/// removal, and each leftover it cannot judge, in `warnings`.
///
/// The files of running processes, this one included, are left alone: two
/// conversions to the same output may run at once, and the second to finish
/// wins. A process id is only meaningful on this machine and in this PID
/// namespace: a conversion writing into the same folder from another
/// machine or container may see its temp file removed, and then fails
/// cleanly when it renames it (it never produces a damaged output).
fn remove_stale_temps(dir: &Path, output: &Path, warnings: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        // Creating the temp file in `dir` reports the problem.
        return;
    };
    let mut found: Vec<(PathBuf, TempOwner)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let owner = temp_owner(output, name.to_str()?)?;
            Some((e.path(), owner))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, owner) in found {
        match owner {
            TempOwner::Pid(pid) => match process_alive(pid) {
                Some(true) => {}
                Some(false) => match std::fs::remove_file(&path) {
                    Ok(()) => warnings.push(format!(
                        "{}: removed the temporary file of an interrupted conversion (process {pid} is gone)",
                        path.display()
                    )),
                    // Another conversion removed it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => warnings.push(format!(
                        "{}: could not remove the temporary file of an interrupted conversion: {e}",
                        path.display()
                    )),
                },
                None => warnings.push(format!(
                    "{}: temporary file of an earlier conversion (process {pid}); \
                     remove it if that conversion is no longer running",
                    path.display()
                )),
            },
            TempOwner::Unknown => warnings.push(format!(
                "{}: temporary file of an earlier conversion (no process id in its name); \
                 remove it if no conversion is running",
                path.display()
            )),
        }
    }
}
