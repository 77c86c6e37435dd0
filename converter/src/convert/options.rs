//! What to convert and how: [`Options`] and the per-tensor type rules
//! ([`TensorType`], `--tensor-type`).

use ferrite_format::{DType, LayerRole, Role};

/// What to convert and how.
///
/// Construct it with [`Default`] and change what differs, so that new
/// options do not break callers:
/// `Options { weights: DType::Q8, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Type of the linear layers' weights.
    pub weights: DType,
    /// Type of the embedding/output table; `None` picks q8 for q4 weights
    /// and the weights' type otherwise.
    pub embed: Option<DType>,
    /// Accept NaN and ±infinity in the source weights (default: refuse them,
    /// [`ErrorKind::NonFinite`](crate::ErrorKind::NonFinite), naming the file, tensor and element). When
    /// set, f32 and f16 tensors store them as they are, and q8/q4 tensors
    /// quantize them as 0 (a group's scale comes from its finite elements);
    /// each affected tensor is reported in [`Summary::warnings`](super::Summary::warnings). Finite
    /// values that would *become* non-finite (beyond f16's range, or a q8/q4
    /// scale beyond it) are refused either way.
    pub allow_nonfinite: bool,
    /// Per-tensor types that override `weights` and `embed`, applied in
    /// order (a later rule wins). Every rule must match some tensor.
    pub tensor_types: Vec<TensorType>,
    /// A preset mix whose rules depend on the model (its layer count, tied
    /// tables): applied before `tensor_types`, which still win. `None`: no
    /// preset.
    pub mix: Option<Mix>,
    /// For a GGUF input: which matrices keep their GGUF type instead of
    /// `weights`/`embed` (stored in the Ferrite type that holds it
    /// exactly, without dequantizing; see [`KeepTypes`]). A
    /// `tensor_types` rule still wins. Ignored for HF folders.
    pub keep: KeepTypes,
}

/// Which GGUF matrices keep their types ([`Options::keep`]): Q4_K, Q5_K,
/// Q6_K, Q5_0, Q5_1 become q4k, q5k, q6k, q5_0, q5_1; Q8_0, Q4_0, Q4_1
/// become q8, q4, q4a (a Q8_0 block holding −128 is requantized and the
/// summary says so); F16 stays f16, F32 and BF16 become f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepTypes {
    /// The linear layers (instead of `weights`).
    pub weights: bool,
    /// The embedding and output tables (instead of `embed`).
    pub embed: bool,
}

impl Default for Options {
    /// q4 weights, the default embedding type, non-finite weights refused.
    fn default() -> Self {
        Options {
            weights: DType::Q4,
            embed: None,
            allow_nonfinite: false,
            tensor_types: Vec::new(),
            mix: None,
            keep: KeepTypes::default(),
        }
    }
}

impl Options {
    /// The embedding table's type.
    pub fn embed_dtype(&self) -> DType {
        self.embed.unwrap_or(match self.weights {
            DType::Q4 | DType::Q4A => DType::Q8,
            other => other,
        })
    }

    /// The type of matrix `role`: the last matching [`TensorType`] rule,
    /// else `embed_dtype()` for the embedding/output table, else `weights`.
    pub fn dtype_of(&self, role: Role) -> DType {
        self.dtype_of_source(role, None).0
    }

    /// [`Options::dtype_of`] for a matrix whose source stores it exactly as
    /// `lossless` (a GGUF tensor's type, [`crate::gguf::GgmlType::lossless_dtype`]):
    /// that type when [`Options::keep`] keeps it and no rule names it. The
    /// second value says whether it was kept (transcoded, not requantized).
    pub fn dtype_of_source(&self, role: Role, lossless: Option<DType>) -> (DType, bool) {
        let table = matches!(role, Role::Embedding | Role::Output);
        if let Some(rule) = self.tensor_types.iter().rev().find(|t| t.matches(role)) {
            return (rule.dtype, false);
        }
        match lossless {
            Some(d) if (table && self.keep.embed) || (!table && self.keep.weights) => (d, true),
            _ => (if table { self.embed_dtype() } else { self.weights }, false),
        }
    }
}

/// A preset mix of storage types ([`Options::mix`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// llama.cpp's Q4_K_M recipe, with `weights` q4k: `attn_v` and
    /// `ffn_down` at q6k in the layers llama.cpp gives more bits (the
    /// first and last eighth of the layers and every third one between,
    /// counted in the layer names' sorted order: [`Mix::more_bits`]); the output table at q6k, and a separate
    /// embedding table at q4k (a tied table is the output table: q6k).
    /// An explicit `embed` type replaces the table rules. Rows that are
    /// not a multiple of 256 fall back as every K type does (q4k to q5_0,
    /// q6k to q8).
    Q4KM,
}

impl Mix {
    /// Whether layer `layer` of `n` gets more bits in llama.cpp's K-quant
    /// mixes. llama.cpp counts a role's tensors in the order they come in
    /// its input, which for a GGUF made from an HF checkpoint is the
    /// names' sorted order (`blk.0`, `blk.1`, `blk.10`, `blk.11`, …), and
    /// gives more bits to the `i`-th of them when `i < n/8`, `i >= 7n/8`
    /// or `(i - n/8) % 3 == 2` (integer arithmetic). So this is that rule
    /// on the layer's rank among the sorted names; with fewer than 11
    /// layers the rank is the layer number.
    pub fn more_bits(layer: u32, n: u32) -> bool {
        let key = layer.to_string();
        let i = (0..n).filter(|k| k.to_string() < key).count() as i64;
        let n = n as i64;
        i < n / 8 || i >= 7 * n / 8 || (i - n / 8).rem_euclid(3) == 2
    }

    /// The mix's rules for a model of `n_layers` layers (`tied`: one
    /// embedding/output table), `tables`: whether to include the table
    /// rules.
    pub fn rules(self, n_layers: u32, tied: bool, tables: bool) -> Vec<TensorType> {
        let Mix::Q4KM = self;
        let mut rules = Vec::new();
        if tables {
            let table = |target| TensorType { layer: None, target, dtype: DType::Q6K };
            rules.push(table(RuleTarget::Output));
            rules
                .push(TensorType { dtype: if tied { DType::Q6K } else { DType::Q4K }, ..table(RuleTarget::Embedding) });
        }
        for l in (0..n_layers).filter(|&l| Mix::more_bits(l, n_layers)) {
            for r in [LayerRole::AttnV, LayerRole::FfnDown] {
                rules.push(TensorType { layer: Some(l), target: RuleTarget::Layer(r), dtype: DType::Q6K });
            }
        }
        rules
    }
}

impl Options {
    /// These options with the mix's rules (if any) expanded for a model of
    /// `n_layers` layers, before the explicit `tensor_types`.
    pub fn with_mix(&self, n_layers: u32, tied: bool) -> Options {
        let mut out = self.clone();
        if let Some(mix) = self.mix {
            let mut rules = mix.rules(n_layers, tied, self.embed.is_none());
            rules.extend_from_slice(&self.tensor_types);
            out.tensor_types = rules;
            out.mix = None;
        }
        out
    }
}

/// A per-tensor type rule, `ROLE=TYPE` or `blk.N.ROLE=TYPE`: `ROLE` is
/// `embedding`, `output` or a layer matrix (`attn_q`, `attn_k`, `attn_v`,
/// `attn_o`, `ffn_gate`, `ffn_up`, `ffn_down`), for every layer or layer `N`
/// only; `TYPE` is `f32`, `f16`, `q8`, `q4`, `q4a`, `q4k`, `q5k`, `q6k`,
/// `q5_0` or `q5_1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorType {
    /// `None`: a global role, or every layer.
    pub layer: Option<u32>,
    target: RuleTarget,
    /// The type to store it as.
    pub dtype: DType,
}

/// The tensors a [`TensorType`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleTarget {
    Embedding,
    Output,
    Layer(LayerRole),
}

impl TensorType {
    /// Whether the rule applies to `role`.
    pub fn matches(&self, role: Role) -> bool {
        match (role, self.target) {
            (Role::Embedding, RuleTarget::Embedding) | (Role::Output, RuleTarget::Output) => true,
            (Role::Layer(l, r), RuleTarget::Layer(want)) => r == want && self.layer.is_none_or(|n| n == l),
            _ => false,
        }
    }
}

impl std::str::FromStr for TensorType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (key, ty) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected ROLE=TYPE, e.g. attn_v=q8"))?;
        let dtype = [
            DType::F32,
            DType::F16,
            DType::Q8,
            DType::Q4,
            DType::Q4A,
            DType::Q4K,
            DType::Q5K,
            DType::Q6K,
            DType::Q5_0,
            DType::Q5_1,
        ]
        .into_iter()
        .find(|d| d.name() == ty.trim())
        .ok_or_else(|| format!("{s:?}: unknown type {ty:?} (f32, f16, q8, q4, q4a, q4k, q5k, q6k, q5_0, q5_1)"))?;
        let key = key.trim();
        let (layer, name) = match key.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((n, name)) => (Some(n.parse::<u32>().map_err(|_| format!("{s:?}: bad layer number {n:?}"))?), name),
            None => (None, key),
        };
        let target = match name {
            "embedding" | "output" if layer.is_some() => {
                return Err(format!("{s:?}: {name} is not a per-layer tensor"));
            }
            "embedding" => RuleTarget::Embedding,
            "output" => RuleTarget::Output,
            _ => RuleTarget::Layer(
                LayerRole::ALL.into_iter().find(|r| !r.is_vector() && r.name() == name).ok_or_else(|| {
                    format!(
                        "{s:?}: unknown tensor {name:?} (embedding, output, attn_q, attn_k, attn_v, attn_o, \
                     ffn_gate, ffn_up, ffn_down, optionally as blk.N.NAME)"
                    )
                })?,
            ),
        };
        Ok(TensorType { layer, target, dtype })
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(l) = self.layer {
            write!(f, "blk.{l}.")?;
        }
        let name = match self.target {
            RuleTarget::Embedding => "embedding",
            RuleTarget::Output => "output",
            RuleTarget::Layer(r) => r.name(),
        };
        write!(f, "{name}={}", self.dtype.name())
    }
}
