//! The C API (`src/ffi/`, feature `ffi`) and its header `include/ferrite.h`.
//!
//! 1. The header against the Rust definitions, by a C compiler: a generated
//!    C file includes the header and redeclares every exported function with
//!    the prototype derived from its Rust signature (a mismatch is a
//!    "conflicting types" error), and `_Static_assert`s every constant's
//!    value and every `#[repr(C)]` struct's size, alignment and field
//!    offsets as Rust computes them. The names declared in the header must
//!    be exactly the Rust ones (no function or constant on one side only).
//!    The header must also compile alone as C99 and as C++.
//! 2. The C functions called from Rust (feature `cli`, which brings the
//!    converter): a converted tiny fixture generates the same greedy ids
//!    through the C API as through the Rust API; every error status.
#![cfg(feature = "ffi")]

#[cfg(feature = "cli")]
mod common;

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferrite::ffi::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Rust source of the C API: every file of `src/ffi/`, in name order.
fn ffi_source() -> String {
    let dir = root().join("src/ffi");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{}: expected the module's files, found {files:?}", dir.display());
    files.iter().map(|p| read(p)).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------
// 1. The header against the Rust definitions

/// An `extern "C" fn` of `src/ffi/`: name, `(name, type)` parameters and
/// the return type (`None` for `()`), as Rust source text.
#[derive(Debug)]
struct RustFn {
    name: String,
    params: Vec<(String, String)>,
    ret: Option<String>,
}

/// Every `extern "C" fn` in `src`, checked to be `#[no_mangle] pub`.
fn rust_functions(src: &str) -> Vec<RustFn> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("extern \"C\" fn ") {
        let line_start = rest[..at].rfind('\n').map_or(0, |i| i + 1);
        let before = &rest[..line_start];
        let prefix = &rest[line_start..at];
        assert!(prefix.trim_start().starts_with("pub "), "extern fn not pub: {prefix}");
        assert!(
            before.trim_end().lines().last().is_some_and(|l| l.trim() == "#[no_mangle]"),
            "an extern \"C\" fn without #[no_mangle] just above it, at ...{}",
            &rest[at..at + 60]
        );
        let after = &rest[at + "extern \"C\" fn ".len()..];
        let open = after.find('(').expect("(");
        let name = after[..open].trim().to_string();
        let mut depth = 0;
        let mut close = open;
        for (i, ch) in after[open..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let params = after[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (n, t) = p.split_once(':').unwrap_or_else(|| panic!("{name}: parameter {p:?}"));
                (n.trim().to_string(), t.trim().to_string())
            })
            .collect();
        let tail = &after[close + 1..];
        let body = tail.find('{').expect("{");
        let ret = tail[..body].trim().strip_prefix("->").map(|t| t.trim().to_string());
        out.push(RustFn { name, params, ret });
        rest = &after[close..];
    }
    out
}

/// `FerriteModelInfo` → `ferrite_model_info`.
fn snake(name: &str) -> String {
    let mut s = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(ch.to_ascii_lowercase());
        } else {
            s.push(ch);
        }
    }
    s
}

/// The C type of a Rust FFI type, as the header must spell it.
fn c_type(rust: &str) -> String {
    let t = rust.trim();
    for (prefix, is_const) in [("*const ", true), ("*mut ", false)] {
        if let Some(inner) = t.strip_prefix(prefix) {
            let c = c_type(inner);
            let inner_is_pointer = inner.trim().starts_with('*');
            return match (is_const, inner_is_pointer) {
                (true, false) => format!("const {c} *"),
                (true, true) => format!("{c} const *"),
                (false, _) => format!("{c} *"),
            };
        }
    }
    match t {
        "FerriteStatus" => "ferrite_status".into(),
        "c_char" => "char".into(),
        "c_void" => "void".into(),
        "bool" => "bool".into(),
        "u8" => "uint8_t".into(),
        "u32" => "uint32_t".into(),
        "u64" => "uint64_t".into(),
        "i32" => "int32_t".into(),
        "usize" => "size_t".into(),
        "f32" => "float".into(),
        _ if t.starts_with("Ferrite") => snake(t),
        _ => panic!("no C type for the Rust type {t:?}: extend c_type in tests/ffi.rs"),
    }
}

/// The header text with comments blanked out.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        let next = match (block, line) {
            (Some(b), Some(l)) => Some(b.min(l)),
            (b, l) => b.or(l),
        };
        let Some(at) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        out.push(' ');
        let end = if rest[at..].starts_with("/*") {
            rest[at..].find("*/").map_or(rest.len(), |e| at + e + 2)
        } else {
            rest[at..].find('\n').map_or(rest.len(), |e| at + e)
        };
        rest = &rest[end..];
    }
}

fn is_ident(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_'
}

/// Identifiers starting with `prefix` in `code`, with what follows each
/// (whitespace skipped).
fn idents<'c>(code: &'c str, prefix: &str) -> Vec<(&'c str, &'c str)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = code[i..].find(prefix).map(|a| a + i) {
        let starts_word = code[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        let end = code[at..].find(|c: char| !is_ident(c)).map_or(code.len(), |e| at + e);
        if starts_word {
            out.push((&code[at..end], code[end..].trim_start()));
        }
        i = end.max(at + 1);
    }
    out
}

/// Names of the functions the header declares.
fn header_functions(code: &str) -> BTreeSet<String> {
    idents(code, "ferrite_")
        .into_iter()
        .filter(|(_, after)| after.starts_with('('))
        .map(|(n, _)| n.to_string())
        .collect()
}

/// `FERRITE_X = value` enum constants of the header.
fn header_constants(code: &str) -> BTreeSet<(String, i64)> {
    idents(code, "FERRITE_")
        .into_iter()
        .filter_map(|(name, after)| {
            let value = after.strip_prefix('=')?.trim_start();
            let digits: String = value.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
            Some((name.to_string(), digits.parse().ok()?))
        })
        .collect()
}

/// What stands between `open` and the next `}` in `code` (`place` names
/// the code in a failure).
fn struct_body<'a>(code: &'a str, open: &str, place: &str) -> &'a str {
    let at = code.find(open).unwrap_or_else(|| panic!("{place}: no `{open}`"));
    let body = &code[at + open.len()..];
    &body[..body.find('}').expect("}")]
}

/// Field names of `typedef struct NAME { ... } NAME;` in the header.
fn header_struct_fields(code: &str, name: &str) -> Vec<String> {
    struct_body(code, &format!("typedef struct {name} {{"), "header")
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.rsplit(|c: char| !is_ident(c)).next().expect("field name").to_string())
        .collect()
}

/// Field names of `pub struct NAME { ... }` in the Rust source.
fn rust_struct_fields(src: &str, name: &str) -> Vec<String> {
    struct_body(src, &format!("pub struct {name} {{"), "src/ffi/")
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("pub ").and_then(|l| l.split_once(':')).map(|(n, _)| n.trim().to_string()))
        .collect()
}

/// A `#[repr(C)]` struct as Rust lays it out.
struct Layout {
    rust: &'static str,
    size: usize,
    align: usize,
    fields: Vec<(&'static str, usize)>,
}

macro_rules! layout {
    ($t:ident { $($f:ident),* $(,)? }) => {
        Layout {
            rust: stringify!($t),
            size: size_of::<$t>(),
            align: align_of::<$t>(),
            fields: vec![$((stringify!($f), offset_of!($t, $f))),*],
        }
    };
}

fn layouts() -> Vec<Layout> {
    vec![
        layout!(FerriteModelInfo {
            vocab_size,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            trained_ctx,
            bos_id,
            n_stop_ids,
            has_bos,
            add_bos,
            has_tokenizer
        }),
        layout!(FerriteSessionConfig { max_ctx, max_batch, sinks, threads, kv_type, streaming }),
        layout!(FerriteSamplerConfig { temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed }),
        layout!(FerriteGenerateOptions { max_new, ignore_eos }),
        layout!(FerriteGenerateCallbacks { token, text, user }),
        layout!(FerriteGenerateResult { generated, decode_steps, end }),
    ]
}

/// Every constant the header must define, with its value.
fn rust_constants() -> BTreeSet<(String, i64)> {
    let mut all: BTreeSet<(String, i64)> =
        STATUSES.iter().map(|(s, name, _)| (name.to_string(), i64::from(s.0))).collect();
    all.extend(KV_TYPES.iter().map(|&(v, name)| (name.to_string(), i64::from(v))));
    all.extend(END_REASONS.iter().map(|&(v, name)| (name.to_string(), i64::from(v))));
    all
}

fn compiler(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// Compiles `source` (in a file named `file`) with the header's folder on
/// the include path; panics with the compiler's output on failure.
fn compile(cc: &str, lang_args: &[&str], file: &str, source: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(file);
    std::fs::write(&path, source).expect("write");
    let include = root().join("include");
    let out = Command::new(cc)
        .args(lang_args)
        .args(["-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"])
        .arg(&include)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (set CC): {e}"));
    assert!(
        out.status.success(),
        "{cc} {lang_args:?} rejected the check program:\n{}\n--- program ---\n{source}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_declares_exactly_the_rust_functions_and_constants() {
    let src = ffi_source();
    let header = strip_comments(&read(&root().join("include/ferrite.h")));

    let rust: BTreeSet<String> = rust_functions(&src).into_iter().map(|f| f.name).collect();
    let c = header_functions(&header);
    assert!(rust.len() >= 20, "parsed only {} functions from src/ffi/", rust.len());
    assert_eq!(
        c,
        rust,
        "\nonly in the header: {:?}\nonly in src/ffi/: {:?}",
        c.difference(&rust).collect::<Vec<_>>(),
        rust.difference(&c).collect::<Vec<_>>()
    );

    let rust = rust_constants();
    let c = header_constants(&header);
    assert_eq!(
        c,
        rust,
        "\nonly in the header: {:?}\nonly in src/ffi/: {:?}",
        c.difference(&rust).collect::<Vec<_>>(),
        rust.difference(&c).collect::<Vec<_>>()
    );

    for l in layouts() {
        let listed: Vec<String> = l.fields.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(rust_struct_fields(&src, l.rust), listed, "{}: the test's field list is out of date", l.rust);
        assert_eq!(header_struct_fields(&header, &snake(l.rust)), listed, "{}: fields differ in the header", l.rust);
    }
}

#[test]
fn header_prototypes_constants_and_layouts_match_rust() {
    let src = ffi_source();
    let mut c =
        String::from("#include <stddef.h>\n#include \"ferrite.h\"\n\n/* Prototypes derived from src/ffi/. */\n");
    for f in rust_functions(&src) {
        let ret = f.ret.as_deref().map_or("void".to_string(), c_type);
        let params = if f.params.is_empty() {
            "void".to_string()
        } else {
            f.params.iter().map(|(n, t)| format!("{} {n}", c_type(t))).collect::<Vec<_>>().join(", ")
        };
        c.push_str(&format!("{ret} {}({params});\n", f.name));
    }
    c.push_str("\n/* Constants. */\n");
    for (name, value) in rust_constants() {
        c.push_str(&format!("_Static_assert({name} == {value}, \"{name} == {value}\");\n"));
    }
    c.push_str("_Static_assert(sizeof(ferrite_status) == 4, \"ferrite_status is 32 bits\");\n");
    c.push_str("\n/* Struct layouts. */\n");
    for l in layouts() {
        let t = snake(l.rust);
        c.push_str(&format!("_Static_assert(sizeof({t}) == {}, \"sizeof({t})\");\n", l.size));
        c.push_str(&format!("_Static_assert(_Alignof({t}) == {}, \"_Alignof({t})\");\n", l.align));
        for (field, offset) in &l.fields {
            c.push_str(&format!("_Static_assert(offsetof({t}, {field}) == {offset}, \"offsetof({t}, {field})\");\n"));
        }
    }
    compile(&compiler("CC", "cc"), &["-x", "c", "-std=c11"], "check.c", &c);
}

#[test]
fn header_is_c99_and_cpp() {
    let program = "#include \"ferrite.h\"\nint main(void) { return ferrite_version() == 0; }\n";
    compile(&compiler("CC", "cc"), &["-x", "c", "-std=c99"], "c99.c", program);
    let cxx = compiler("CXX", "c++");
    if Command::new(&cxx).arg("--version").output().is_ok_and(|o| o.status.success()) {
        compile(&cxx, &["-x", "c++", "-std=c++11"], "cpp.cpp", program);
    } else {
        eprintln!("no C++ compiler ({cxx}): C++ check skipped");
    }
}

// ---------------------------------------------------------------------------
// 2. The C functions, called from Rust

fn cstr(p: *const std::ffi::c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: the library returns NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn last_error() -> String {
    cstr(ferrite_last_error_message())
}

#[test]
fn version_and_status_strings() {
    assert_eq!(cstr(ferrite_version()), env!("CARGO_PKG_VERSION"));
    for (status, _, text) in STATUSES {
        assert_eq!(cstr(ferrite_status_string(*status)), text.to_string_lossy());
        assert!(!text.is_empty());
    }
    assert_eq!(cstr(ferrite_status_string(FerriteStatus(-1))), "unknown status");
    assert_eq!(cstr(ferrite_status_string(FerriteStatus(1000))), "unknown status");
}

#[test]
fn null_pointers_are_invalid_arguments() {
    use std::ptr::{null, null_mut};
    let inval = FerriteStatus::INVALID_ARGUMENT;
    // SAFETY: NULL is allowed everywhere; it must be refused, not read.
    unsafe {
        let mut model = std::ptr::dangling_mut::<FerriteModel>();
        assert_eq!(ferrite_model_open(null(), &mut model), inval);
        assert!(model.is_null(), "a failed constructor sets *out to NULL");
        assert!(last_error().contains("path is NULL"), "{}", last_error());
        assert_eq!(ferrite_model_open(c"x.frt".as_ptr(), null_mut()), inval);
        assert_eq!(ferrite_model_from_bytes(null(), 10, &mut model), inval);
        assert_eq!(ferrite_model_get_info(null(), null_mut()), inval);
        assert_eq!(ferrite_model_is_stop(null(), 0, null_mut()), inval);
        assert_eq!(ferrite_model_stop_ids(null(), null_mut(), null_mut()), inval);
        assert_eq!(ferrite_session_config_default(null_mut()), inval);
        assert_eq!(ferrite_plan_arena_bytes(null(), null(), null_mut()), inval);
        let mut sess = std::ptr::dangling_mut::<FerriteSession>();
        assert_eq!(ferrite_session_new(null(), null(), null_mut(), 0, &mut sess), inval);
        assert!(sess.is_null());
        assert_eq!(ferrite_session_reset(null_mut()), inval);
        assert_eq!(ferrite_session_position(null_mut(), null_mut()), inval);
        assert_eq!(ferrite_session_prefill(null_mut(), null(), 0, null_mut()), inval);
        assert_eq!(ferrite_session_step(null_mut(), 0, null_mut()), inval);
        assert_eq!(ferrite_session_state_len(null_mut(), null_mut()), inval);
        assert_eq!(ferrite_session_save(null_mut(), null_mut(), 0, null_mut()), inval);
        assert_eq!(ferrite_session_restore(null_mut(), null(), 0), inval);
        assert_eq!(ferrite_argmax(null(), 3, null_mut()), inval);
        let mut id = 0u32;
        assert_eq!(ferrite_argmax(null(), 0, &mut id), inval, "no logits");
        assert_eq!(ferrite_sampler_config_default(null_mut()), inval);
        let mut sampler = std::ptr::dangling_mut::<FerriteSampler>();
        assert_eq!(ferrite_sampler_new(null(), 10, &mut sampler), inval);
        assert!(sampler.is_null());
        assert_eq!(ferrite_sampler_reseed(null_mut(), 1), inval);
        assert_eq!(ferrite_sampler_sample(null_mut(), null(), 0, null(), 0, null_mut()), inval);
        assert_eq!(ferrite_tokenize(null(), null(), 0, true, null_mut(), 0, null_mut()), inval);
        assert_eq!(ferrite_token_bytes(null(), 0, null_mut(), null_mut()), inval);
        assert_eq!(ferrite_decode(null(), null(), 0, false, null_mut(), 0, null_mut()), inval);
        // Freeing NULL is a no-op.
        assert_eq!(ferrite_model_free(null_mut()), FerriteStatus::OK);
        assert_eq!(ferrite_session_free(null_mut()), FerriteStatus::OK);
        assert_eq!(ferrite_sampler_free(null_mut()), FerriteStatus::OK);
    }
}

#[test]
fn argmax_is_greedy_and_checks_its_input() {
    let mut id = u32::MAX;
    let run = |logits: &[f32], id: &mut u32| {
        // SAFETY: a valid slice and output.
        unsafe { ferrite_argmax(logits.as_ptr(), logits.len(), id) }
    };
    assert_eq!(run(&[0.1, 3.0, -2.0, 3.0], &mut id), FerriteStatus::OK);
    assert_eq!(id, 1, "lowest index on ties");
    assert_eq!(run(&[f32::NEG_INFINITY, -1e30], &mut id), FerriteStatus::OK);
    assert_eq!(id, 1);
    assert_eq!(run(&[0.0, f32::NAN], &mut id), FerriteStatus::INVALID_ARGUMENT);
    assert_eq!(run(&[0.0, f32::INFINITY], &mut id), FerriteStatus::INVALID_ARGUMENT);
    assert_eq!(run(&[f32::NEG_INFINITY; 3], &mut id), FerriteStatus::INVALID_ARGUMENT);
    assert_eq!(id, 1, "output unchanged on failure");
}

#[test]
fn sampler_matches_the_rust_sampler() {
    use ferrite_runtime::sampler::{Sampler, SamplerConfig};
    let mut cfg = std::mem::MaybeUninit::<FerriteSamplerConfig>::uninit();
    // SAFETY: a valid output.
    assert_eq!(unsafe { ferrite_sampler_config_default(cfg.as_mut_ptr()) }, FerriteStatus::OK);
    // SAFETY: initialized by the call above.
    let mut cfg = unsafe { cfg.assume_init() };
    let d = SamplerConfig::default();
    assert_eq!(
        (cfg.temperature, cfg.top_k as usize, cfg.top_p, cfg.min_p, cfg.seed),
        (d.temperature, d.top_k, d.top_p, d.min_p, d.seed)
    );
    cfg.seed = 7;
    cfg.repeat_penalty = 1.3;
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4).collect();
    let recent = [3u32, 9, 3];
    let mut sampler = std::ptr::null_mut();
    // SAFETY: valid pointers throughout; the sampler is freed at the end.
    unsafe {
        assert_eq!(ferrite_sampler_new(&cfg, 64, &mut sampler), FerriteStatus::OK);
        let mut rust = Sampler::new(SamplerConfig { seed: 7, repeat_penalty: 1.3, ..d }).expect("sampler");
        let mut scratch = vec![0u32; logits.len()];
        for _ in 0..20 {
            let mut id = 0u32;
            assert_eq!(
                ferrite_sampler_sample(sampler, logits.as_ptr(), logits.len(), recent.as_ptr(), recent.len(), &mut id),
                FerriteStatus::OK
            );
            let mut row = logits.clone();
            assert_eq!(id, rust.sample(&mut row, &recent, &mut scratch).expect("sample"));
        }
        let mut id = 0u32;
        // More logits than the sampler was made for; a recent id out of range.
        let long = vec![0f32; 65];
        assert_eq!(
            ferrite_sampler_sample(sampler, long.as_ptr(), 65, std::ptr::null(), 0, &mut id),
            FerriteStatus::INVALID_ARGUMENT
        );
        assert_eq!(
            ferrite_sampler_sample(sampler, logits.as_ptr(), 50, [50u32].as_ptr(), 1, &mut id),
            FerriteStatus::BAD_TOKEN
        );
        assert_eq!(ferrite_sampler_reseed(sampler, 7), FerriteStatus::OK);
        assert_eq!(ferrite_sampler_free(sampler), FerriteStatus::OK);

        let bad = FerriteSamplerConfig { top_p: 2.0, ..cfg };
        assert_eq!(ferrite_sampler_new(&bad, 64, &mut sampler), FerriteStatus::BAD_CONFIG);
        assert!(last_error().contains("top_p"), "{}", last_error());
        assert!(sampler.is_null());
    }
}

#[cfg(feature = "cli")]
mod with_models {
    use super::*;
    use ferrite_format::writer::AlignedBytes;
    use ferrite_format::DType;
    use ferrite_runtime::sampler::{Sampler, SamplerConfig};
    use ferrite_runtime::{KvType, Model, Session, SessionConfig};
    use std::ffi::CString;
    use std::ptr::{null, null_mut};

    /// A fixture converted to a `.frt` file in a temp dir (kept alive by
    /// the returned guard).
    fn converted(dir: &Path, weights: DType) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("m.frt");
        ferrite_converter::convert(
            dir,
            &out,
            &ferrite_converter::Options { weights, ..Default::default() },
            &mut |_| {},
        )
        .expect("convert");
        (tmp, out)
    }

    fn c_path(p: &Path) -> CString {
        CString::new(p.to_str().expect("utf-8 path")).expect("no NUL")
    }

    /// Opens `path` through the C API.
    fn open(path: &Path) -> *mut FerriteModel {
        let mut model = null_mut();
        // SAFETY: a NUL-terminated path and a valid output.
        let status = unsafe { ferrite_model_open(c_path(path).as_ptr(), &mut model) };
        assert_eq!(status, FerriteStatus::OK, "{}", last_error());
        assert!(!model.is_null());
        model
    }

    fn default_config() -> FerriteSessionConfig {
        let mut cfg = std::mem::MaybeUninit::uninit();
        // SAFETY: a valid output.
        assert_eq!(unsafe { ferrite_session_config_default(cfg.as_mut_ptr()) }, FerriteStatus::OK);
        // SAFETY: initialized by the call.
        unsafe { cfg.assume_init() }
    }

    fn sampler_default() -> FerriteSamplerConfig {
        let mut cfg = FerriteSamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 0.0,
            min_p: 0.0,
            repeat_penalty: 0.0,
            repeat_last_n: 0,
            seed: 0,
        };
        // SAFETY: a valid output.
        assert_eq!(unsafe { ferrite_sampler_config_default(&mut cfg) }, FerriteStatus::OK);
        cfg
    }

    fn info(model: *const FerriteModel) -> FerriteModelInfo {
        let mut info = FerriteModelInfo::default();
        // SAFETY: a live model and a valid output.
        assert_eq!(unsafe { ferrite_model_get_info(model, &mut info) }, FerriteStatus::OK);
        info
    }

    /// A session over `arena` through the C API.
    fn session(model: *const FerriteModel, cfg: &FerriteSessionConfig, arena: &mut [u8]) -> *mut FerriteSession {
        let mut sess = null_mut();
        // SAFETY: a live model; the arena outlives the session (callers free
        // the session before dropping it).
        let status = unsafe { ferrite_session_new(model, cfg, arena.as_mut_ptr().cast(), arena.len(), &mut sess) };
        assert_eq!(status, FerriteStatus::OK, "{}", last_error());
        sess
    }

    fn arena_bytes(model: *const FerriteModel, cfg: &FerriteSessionConfig) -> usize {
        let mut n = 0usize;
        // SAFETY: valid pointers.
        let status = unsafe { ferrite_plan_arena_bytes(model, cfg, &mut n) };
        assert_eq!(status, FerriteStatus::OK, "{}", last_error());
        n
    }

    /// Greedy generation through the C API, as `ferrite run --temp 0`:
    /// up to `n` ids, stopping after a stop id unless `ignore_eos`.
    fn generate_c(
        sess: *mut FerriteSession,
        model: *const FerriteModel,
        prompt: &[u32],
        n: usize,
        ignore_eos: bool,
    ) -> Vec<u32> {
        let vocab = info(model).vocab_size as usize;
        let mut ids = Vec::new();
        let mut logits: *const f32 = null();
        // SAFETY: a live session and model; `logits` is read before the
        // next call on the session.
        unsafe {
            assert_eq!(
                ferrite_session_prefill(sess, prompt.as_ptr(), prompt.len(), &mut logits),
                FerriteStatus::OK,
                "{}",
                last_error()
            );
            for i in 0..n {
                let mut id = 0u32;
                assert_eq!(ferrite_argmax(logits, vocab, &mut id), FerriteStatus::OK);
                ids.push(id);
                let mut stop = false;
                assert_eq!(ferrite_model_is_stop(model, id, &mut stop), FerriteStatus::OK);
                if (stop && !ignore_eos) || i + 1 == n {
                    break;
                }
                assert_eq!(ferrite_session_step(sess, id, &mut logits), FerriteStatus::OK, "{}", last_error());
            }
        }
        ids
    }

    /// The same with the Rust API and the runtime's greedy sampler.
    fn generate_rust(path: &Path, cfg: SessionConfig, prompt: &[u32], n: usize, ignore_eos: bool) -> Vec<u32> {
        let model = Model::open(path).expect("open");
        let plan = model.plan(&cfg).expect("plan");
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let mut sampler = Sampler::new(SamplerConfig::greedy()).expect("sampler");
        let vocab = model.config().vocab_size as usize;
        let mut scratch = vec![0u32; vocab];
        let mut logits = session.prefill(prompt).expect("prefill").to_vec();
        let mut ids = Vec::new();
        for i in 0..n {
            let id = sampler.sample(&mut logits, &[], &mut scratch).expect("sample");
            ids.push(id);
            if (model.config().is_stop(id) && !ignore_eos) || i + 1 == n {
                break;
            }
            logits.copy_from_slice(session.step(id).expect("step"));
        }
        ids
    }

    #[test]
    fn greedy_through_c_equals_the_rust_api() {
        let (_tmp, path) = converted(&common::tiny("llama-gqa"), DType::Q8);
        let model = open(&path);
        let i = info(model);
        assert_eq!((i.vocab_size, i.n_layers, i.d_model, i.n_heads, i.n_kv_heads, i.head_dim), (512, 2, 64, 4, 2, 16));
        assert!(!i.has_tokenizer);
        let prompt = [1u32, 2, 3, 4];
        for (kv_type, kv) in [(FERRITE_KV_F16, KvType::F16), (FERRITE_KV_F32, KvType::F32), (FERRITE_KV_Q8, KvType::Q8)]
        {
            for (max_ctx, streaming) in [(64, true), (16, true), (64, false)] {
                let cfg = FerriteSessionConfig { max_ctx, kv_type, streaming, max_batch: 3, ..default_config() };
                let rust_cfg = SessionConfig { max_ctx, kv, streaming, max_batch: 3, ..Default::default() };
                let mut arena = vec![0u8; arena_bytes(model, &cfg)];
                let sess = session(model, &cfg, &mut arena);
                for ignore_eos in [false, true] {
                    // SAFETY: a live session.
                    assert_eq!(unsafe { ferrite_session_reset(sess) }, FerriteStatus::OK);
                    let n = if streaming { 40 } else { 24 };
                    let c = generate_c(sess, model, &prompt, n, ignore_eos);
                    let rust = generate_rust(&path, rust_cfg, &prompt, n, ignore_eos);
                    assert_eq!(c, rust, "kv {kv:?}, max_ctx {max_ctx}, streaming {streaming}, ignore_eos {ignore_eos}");
                    let mut pos = 0usize;
                    // SAFETY: a live session and a valid output.
                    assert_eq!(unsafe { ferrite_session_position(sess, &mut pos) }, FerriteStatus::OK);
                    assert_eq!(pos, prompt.len() + c.len() - 1);
                }
                // SAFETY: freed once; the arena outlives it.
                assert_eq!(unsafe { ferrite_session_free(sess) }, FerriteStatus::OK);
            }
        }
        // SAFETY: no session is alive.
        assert_eq!(unsafe { ferrite_model_free(model) }, FerriteStatus::OK);
    }

    /// Collects what `ferrite_generate` calls back.
    #[derive(Default)]
    struct Seen {
        ids: Vec<u32>,
        stop_after: usize,
    }

    unsafe extern "C" fn on_token(user: *mut core::ffi::c_void, id: u32) -> i32 {
        // SAFETY: `user` is the `Seen` the test passes, alive for the call.
        let seen = unsafe { &mut *user.cast::<Seen>() };
        seen.ids.push(id);
        i32::from(seen.ids.len() == seen.stop_after)
    }

    unsafe extern "C" fn on_text(_: *mut core::ffi::c_void, _: *const core::ffi::c_char, _: usize) {}

    /// `ferrite_generate` gives the ids of the step-by-step C loop above
    /// (greedy), says why it ended, stops when the callback says so, keeps
    /// the ids before a full context, and refuses a text callback without a
    /// tokenizer.
    #[test]
    fn ferrite_generate_equals_the_step_by_step_loop() {
        let (_tmp, path) = converted(&common::tiny("llama-gqa"), DType::Q8);
        let model = open(&path);
        let vocab = info(model).vocab_size as usize;
        let prompt = [1u32, 2, 3, 4];
        let mut sampler = null_mut();
        let greedy = FerriteSamplerConfig { temperature: 0.0, ..sampler_default() };
        // SAFETY: valid pointers.
        assert_eq!(unsafe { ferrite_sampler_new(&greedy, vocab, &mut sampler) }, FerriteStatus::OK, "{}", last_error());
        for (max_ctx, streaming, n) in [(64, true, 40), (16, true, 40), (16, false, 24)] {
            let cfg = FerriteSessionConfig { max_ctx, streaming, max_batch: 3, ..default_config() };
            let mut arena = vec![0u8; arena_bytes(model, &cfg)];
            let sess = session(model, &cfg, &mut arena);
            let run = |max_new: usize, stop_after: usize, text: bool| {
                let mut seen = Seen { stop_after, ..Seen::default() };
                let callbacks = FerriteGenerateCallbacks {
                    token: Some(on_token),
                    text: if text { Some(on_text) } else { None },
                    user: (&mut seen as *mut Seen).cast(),
                };
                let opts = FerriteGenerateOptions { max_new, ignore_eos: true };
                let mut result = FerriteGenerateResult { generated: 99, decode_steps: 99, end: 99 };
                // SAFETY: live handles, valid pointers; `seen` outlives the call.
                let status = unsafe {
                    assert_eq!(ferrite_session_reset(sess), FerriteStatus::OK);
                    ferrite_generate(sess, sampler, prompt.as_ptr(), prompt.len(), &opts, &callbacks, &mut result)
                };
                (status, result, seen.ids)
            };
            // SAFETY: a live session.
            assert_eq!(unsafe { ferrite_session_reset(sess) }, FerriteStatus::OK);
            let want = generate_c(sess, model, &prompt, n.min(12), true);
            let (status, result, ids) = run(n.min(12), 0, false);
            assert_eq!(status, FerriteStatus::OK, "{}", last_error());
            assert_eq!(ids, want, "max_ctx {max_ctx} streaming {streaming}");
            assert_eq!((result.generated, result.decode_steps, result.end), (12, 11, FERRITE_END_MAX_TOKENS));
            let (status, result, ids) = run(n, 5, false);
            assert_eq!(status, FerriteStatus::OK);
            assert_eq!((ids.len(), result.generated, result.end), (5, 5, FERRITE_END_CALLBACK));
            let (status, result, ids) = run(n, 0, false);
            if streaming {
                assert_eq!((status, result.generated, result.end), (FerriteStatus::OK, n, FERRITE_END_MAX_TOKENS));
            } else {
                // 4 + 12 tokens fill the 16 slots: the 13th new id cannot be fed.
                assert_eq!(status, FerriteStatus::CONTEXT_FULL, "{}", last_error());
                assert_eq!((result.generated, result.decode_steps, result.end), (13, 12, FERRITE_END_ERROR));
                assert_eq!(ids.len(), 13);
            }
            let (status, ..) = run(4, 0, true);
            assert_eq!(status, FerriteStatus::NO_TOKENIZER);
            // SAFETY: freed once; the arena outlives it.
            assert_eq!(unsafe { ferrite_session_free(sess) }, FerriteStatus::OK);
        }
        // SAFETY: live handles, freed once; no session is alive.
        unsafe {
            assert_eq!(ferrite_sampler_free(sampler), FerriteStatus::OK);
            assert_eq!(ferrite_model_free(model), FerriteStatus::OK);
        }
    }

    #[test]
    fn model_from_caller_bytes() {
        let (_tmp, path) = converted(&common::tiny("llama-gqa"), DType::Q4);
        let bytes = AlignedBytes::read(&path).expect("read");
        let mut model = null_mut();
        // SAFETY: `bytes` outlives the model (freed below).
        unsafe {
            assert_eq!(
                ferrite_model_from_bytes(bytes.as_ptr(), bytes.len(), &mut model),
                FerriteStatus::OK,
                "{}",
                last_error()
            );
            let cfg = default_config();
            let mut arena = vec![0u8; arena_bytes(model, &cfg) + 7];
            // Any arena alignment will do.
            let sess = session(model, &cfg, &mut arena[7..]);
            let from_bytes = generate_c(sess, model, &[5, 6, 7], 12, true);
            assert_eq!(ferrite_session_free(sess), FerriteStatus::OK);
            assert_eq!(ferrite_model_free(model), FerriteStatus::OK);
            let opened = open(&path);
            let mut arena = vec![0u8; arena_bytes(opened, &cfg)];
            let sess = session(opened, &cfg, &mut arena);
            assert_eq!(generate_c(sess, opened, &[5, 6, 7], 12, true), from_bytes);
            assert_eq!(ferrite_session_free(sess), FerriteStatus::OK);
            assert_eq!(ferrite_model_free(opened), FerriteStatus::OK);

            // Misaligned start: MISALIGNED, not UB.
            assert_eq!(
                ferrite_model_from_bytes(bytes.as_ptr().add(1), bytes.len() - 1, &mut model),
                FerriteStatus::MISALIGNED
            );
            assert!(model.is_null());
            // Garbage, aligned: INVALID_MODEL.
            let garbage = AlignedBytes::new(&[7u8; 4096]);
            assert_eq!(
                ferrite_model_from_bytes(garbage.as_ptr(), garbage.len(), &mut model),
                FerriteStatus::INVALID_MODEL
            );
            assert!(!last_error().is_empty());
        }
    }

    #[test]
    fn open_errors() {
        let mut model = null_mut();
        // SAFETY: NUL-terminated paths and a valid output.
        unsafe {
            let missing = c_path(Path::new("/nonexistent/dir/m.frt"));
            assert_eq!(ferrite_model_open(missing.as_ptr(), &mut model), FerriteStatus::IO);
            assert!(last_error().contains("/nonexistent/dir/m.frt"), "{}", last_error());
            let not_frt = c_path(&common::tiny("llama-gqa").join("config.json"));
            assert_eq!(ferrite_model_open(not_frt.as_ptr(), &mut model), FerriteStatus::INVALID_MODEL);
            assert!(model.is_null());
        }
    }

    #[test]
    fn session_errors() {
        let (_tmp, path) = converted(&common::tiny("llama-gqa"), DType::Q8);
        let model = open(&path);
        let cfg = FerriteSessionConfig { max_ctx: 8, streaming: false, ..default_config() };
        let need = arena_bytes(model, &cfg);
        let mut arena = vec![0u8; need];
        let mut sess = std::ptr::dangling_mut::<FerriteSession>();
        // SAFETY: valid pointers; every session is freed before its arena
        // and the model.
        unsafe {
            // Arena too small.
            assert_eq!(
                ferrite_session_new(model, &cfg, arena.as_mut_ptr().cast(), need - 1, &mut sess),
                FerriteStatus::ARENA_TOO_SMALL
            );
            assert!(sess.is_null());
            assert!(last_error().contains(&need.to_string()), "{}", last_error());
            // Config out of range.
            let mut n = 0usize;
            for bad in [
                FerriteSessionConfig { kv_type: 99, ..cfg },
                FerriteSessionConfig { threads: 0, ..cfg },
                FerriteSessionConfig { max_ctx: 0, ..cfg },
                FerriteSessionConfig { max_batch: 0, ..cfg },
                FerriteSessionConfig { streaming: true, sinks: 8, ..cfg },
                FerriteSessionConfig { max_ctx: usize::MAX / 2, ..cfg },
            ] {
                assert_eq!(ferrite_plan_arena_bytes(model, &bad, &mut n), FerriteStatus::BAD_CONFIG, "{bad:?}");
                assert_eq!(
                    ferrite_session_new(model, &bad, arena.as_mut_ptr().cast(), need, &mut sess),
                    FerriteStatus::BAD_CONFIG
                );
            }
            let sess = session(model, &cfg, &mut arena);
            let mut logits = null();
            // Bad tokens, an empty prompt: refused before anything is fed.
            assert_eq!(ferrite_session_prefill(sess, [1u32, 512].as_ptr(), 2, &mut logits), FerriteStatus::BAD_TOKEN);
            assert!(last_error().contains("512"), "{}", last_error());
            assert_eq!(ferrite_session_step(sess, u32::MAX, &mut logits), FerriteStatus::BAD_TOKEN);
            assert_eq!(ferrite_session_prefill(sess, null(), 0, &mut logits), FerriteStatus::EMPTY_PROMPT);
            assert_eq!(ferrite_session_prefill(sess, null(), 3, &mut logits), FerriteStatus::INVALID_ARGUMENT);
            assert!(logits.is_null(), "outputs unchanged on failure");
            let mut pos = 9usize;
            assert_eq!(ferrite_session_position(sess, &mut pos), FerriteStatus::OK);
            assert_eq!(pos, 0);
            // The cache fills (streaming off): CONTEXT_FULL, nothing fed.
            assert_eq!(ferrite_session_prefill(sess, [1u32; 6].as_ptr(), 6, null_mut()), FerriteStatus::OK);
            assert_eq!(ferrite_session_prefill(sess, [1u32; 3].as_ptr(), 3, &mut logits), FerriteStatus::CONTEXT_FULL);
            assert_eq!(ferrite_session_step(sess, 1, &mut logits), FerriteStatus::OK);
            assert_eq!(ferrite_session_step(sess, 1, &mut logits), FerriteStatus::OK);
            assert_eq!(ferrite_session_step(sess, 1, &mut logits), FerriteStatus::CONTEXT_FULL);
            assert_eq!(ferrite_session_position(sess, &mut pos), FerriteStatus::OK);
            assert_eq!(pos, 8);
            assert_eq!(ferrite_session_reset(sess), FerriteStatus::OK);
            assert_eq!(ferrite_session_step(sess, 1, &mut logits), FerriteStatus::OK);

            // The model refuses to go while the session lives.
            assert_eq!(ferrite_model_free(model), FerriteStatus::MODEL_IN_USE);
            assert!(last_error().contains("1 session"), "{}", last_error());
            assert_eq!(ferrite_session_free(sess), FerriteStatus::OK);
            assert_eq!(ferrite_model_free(model), FerriteStatus::OK);
        }
    }

    #[test]
    fn save_and_restore() {
        let (_tmp, path) = converted(&common::tiny("llama-gqa"), DType::Q8);
        let model = open(&path);
        let cfg = FerriteSessionConfig { max_ctx: 32, ..default_config() };
        let mut arena_a = vec![0u8; arena_bytes(model, &cfg)];
        let mut arena_b = arena_a.clone();
        // SAFETY: valid pointers; sessions freed before their arenas and the model.
        unsafe {
            let a = session(model, &cfg, &mut arena_a);
            assert_eq!(ferrite_session_prefill(a, [1u32, 2, 3, 4, 5].as_ptr(), 5, null_mut()), FerriteStatus::OK);
            let mut len = 0usize;
            assert_eq!(ferrite_session_state_len(a, &mut len), FerriteStatus::OK);
            let mut small = vec![0u8; len - 1];
            let mut n = 0usize;
            assert_eq!(
                ferrite_session_save(a, small.as_mut_ptr().cast(), small.len(), &mut n),
                FerriteStatus::BUFFER_TOO_SMALL
            );
            assert_eq!(n, len);
            let mut state = vec![0u8; len];
            assert_eq!(ferrite_session_save(a, state.as_mut_ptr().cast(), state.len(), &mut n), FerriteStatus::OK);
            assert_eq!(n, len);
            let cont_a = generate_c_from_logits(a, model, 10);

            let b = session(model, &cfg, &mut arena_b);
            assert_eq!(ferrite_session_restore(b, state.as_ptr().cast(), 10), FerriteStatus::BAD_STATE);
            state[len - 1] ^= 1;
            assert_eq!(ferrite_session_restore(b, state.as_ptr().cast(), len), FerriteStatus::BAD_STATE);
            state[len - 1] ^= 1;
            assert_eq!(ferrite_session_restore(b, state.as_ptr().cast(), len), FerriteStatus::OK, "{}", last_error());
            assert_eq!(generate_c_from_logits(b, model, 10), cont_a);
            assert_eq!(ferrite_session_free(a), FerriteStatus::OK);
            assert_eq!(ferrite_session_free(b), FerriteStatus::OK);
            assert_eq!(ferrite_model_free(model), FerriteStatus::OK);
        }
    }

    /// `n` greedy ids continuing from the session's current logits (fetched
    /// by saving its state: the last `vocab` floats).
    fn generate_c_from_logits(sess: *mut FerriteSession, model: *const FerriteModel, n: usize) -> Vec<u32> {
        let vocab = info(model).vocab_size as usize;
        // SAFETY: valid pointers throughout.
        unsafe {
            let mut len = 0usize;
            assert_eq!(ferrite_session_state_len(sess, &mut len), FerriteStatus::OK);
            let mut state = vec![0u8; len];
            let mut n_out = 0;
            assert_eq!(ferrite_session_save(sess, state.as_mut_ptr().cast(), len, &mut n_out), FerriteStatus::OK);
            let mut logits: Vec<f32> = state[len - vocab * 4..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let mut ids = Vec::new();
            for _ in 0..n {
                let mut id = 0u32;
                assert_eq!(ferrite_argmax(logits.as_ptr(), vocab, &mut id), FerriteStatus::OK);
                ids.push(id);
                let mut next = null();
                assert_eq!(ferrite_session_step(sess, id, &mut next), FerriteStatus::OK);
                logits.copy_from_slice(std::slice::from_raw_parts(next, vocab));
            }
            ids
        }
    }

    /// A copy of a tiny fixture with a small byte-level BPE tokenizer.
    fn fixture_with_tokenizer() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = common::tiny("llama-gqa");
        for f in ["config.json", "generation_config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
        }
        let table = ferrite_converter::hf_tokenizer::byte_to_char_table();
        let mut vocab = serde_json::Map::new();
        for (b, ch) in table.iter().enumerate() {
            vocab.insert(ch.to_string(), b.into());
        }
        let merged = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")];
        for (i, (a, b)) in merged.iter().enumerate() {
            vocab.insert(format!("{a}{b}"), (256 + i).into());
        }
        let merges: Vec<String> = merged.iter().map(|(a, b)| format!("{a} {b}")).collect();
        let tokenizer = serde_json::json!({
            "model": { "type": "BPE", "vocab": vocab, "merges": merges },
            "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "use_regex": true },
            "added_tokens": [{ "id": 260, "content": "<|end|>", "special": true }],
        });
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).expect("write");
        let config = serde_json::json!({ "eos_token": "<|end|>" });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).expect("write");
        dir
    }

    #[test]
    fn tokenizer_through_c() {
        let hf = fixture_with_tokenizer();
        let (_tmp, path) = converted(hf.path(), DType::Q8);
        let model = open(&path);
        assert!(info(model).has_tokenizer);
        let text = "hello <|end|>hello";
        // SAFETY: valid pointers; the model is freed last.
        unsafe {
            let mut ids = vec![0u32; text.len()];
            let mut n = 0usize;
            assert_eq!(
                ferrite_tokenize(model, text.as_ptr().cast(), text.len(), true, ids.as_mut_ptr(), ids.len(), &mut n),
                FerriteStatus::OK,
                "{}",
                last_error()
            );
            ids.truncate(n);
            assert_eq!(ids, [259, b' ' as u32, 260, 259]);
            let mut stop = false;
            assert_eq!(ferrite_model_is_stop(model, 260, &mut stop), FerriteStatus::OK);
            assert!(stop, "the tokenizer's EOS is a stop id");
            let (mut stops, mut n_stops) = (null(), 0usize);
            assert_eq!(ferrite_model_stop_ids(model, &mut stops, &mut n_stops), FerriteStatus::OK);
            assert!(std::slice::from_raw_parts(stops, n_stops).contains(&260));

            // Without parse_special the marker is plain text.
            let mut plain = vec![0u32; text.len()];
            assert_eq!(
                ferrite_tokenize(
                    model,
                    text.as_ptr().cast(),
                    text.len(),
                    false,
                    plain.as_mut_ptr(),
                    plain.len(),
                    &mut n
                ),
                FerriteStatus::OK
            );
            assert!(!plain[..n].contains(&260));
            // Too small an output: the bound that always suffices.
            assert_eq!(
                ferrite_tokenize(model, text.as_ptr().cast(), text.len(), true, plain.as_mut_ptr(), 2, &mut n),
                FerriteStatus::BUFFER_TOO_SMALL
            );
            assert_eq!(n, 2 * text.len() + 2);
            // Not UTF-8.
            assert_eq!(
                ferrite_tokenize(model, [0xffu8].as_ptr().cast(), 1, true, plain.as_mut_ptr(), 4, &mut n),
                FerriteStatus::INVALID_ARGUMENT
            );

            let (mut ptr, mut len) = (null(), 0usize);
            assert_eq!(ferrite_token_bytes(model, 259, &mut ptr, &mut len), FerriteStatus::OK);
            assert_eq!(std::slice::from_raw_parts(ptr, len), b"hello");
            assert_eq!(ferrite_token_bytes(model, 261, &mut ptr, &mut len), FerriteStatus::BAD_TOKEN);

            let mut out = vec![0u8; 64];
            assert_eq!(
                ferrite_decode(model, ids.as_ptr(), ids.len(), false, out.as_mut_ptr().cast(), out.len(), &mut n),
                FerriteStatus::OK
            );
            assert_eq!(&out[..n], text.as_bytes());
            assert_eq!(
                ferrite_decode(model, ids.as_ptr(), ids.len(), true, out.as_mut_ptr().cast(), out.len(), &mut n),
                FerriteStatus::OK
            );
            assert_eq!(&out[..n], b"hello hello");
            assert_eq!(
                ferrite_decode(model, ids.as_ptr(), ids.len(), false, out.as_mut_ptr().cast(), 4, &mut n),
                FerriteStatus::BUFFER_TOO_SMALL
            );
            assert_eq!(n, text.len(), "the bytes needed");
            assert_eq!(ferrite_model_free(model), FerriteStatus::OK);
        }

        // A file without a tokenizer.
        let (_tmp, path) = converted(&common::tiny("llama-gqa"), DType::Q8);
        let model = open(&path);
        // SAFETY: valid pointers.
        unsafe {
            let mut ids = [0u32; 8];
            let mut n = 0usize;
            assert_eq!(
                ferrite_tokenize(model, c"hi".as_ptr(), 2, true, ids.as_mut_ptr(), 8, &mut n),
                FerriteStatus::NO_TOKENIZER
            );
            let (mut ptr, mut len) = (null(), 0usize);
            assert_eq!(ferrite_token_bytes(model, 1, &mut ptr, &mut len), FerriteStatus::NO_TOKENIZER);
            assert_eq!(ferrite_model_free(model), FerriteStatus::OK);
        }
    }
}
