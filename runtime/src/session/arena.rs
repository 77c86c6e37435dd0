//! Carving the caller's arena into a session's buffers.
//!
//! [`carve`] is the one description of what a session holds: [`Plan::new`]
//! runs it over a [`Measure`] (which only adds up sizes) and
//! [`Session::new`] over a [`Carver`] (which hands out aligned slices of
//! the arena), so the planned size is by construction the carved one.
//!
//! [`Plan::new`]: super::Plan
//! [`Session::new`]: super::Session::new

use core::mem::{size_of, MaybeUninit};

use ferrite_format::ModelConfig;

use super::plan::{Layout, PlanParts};
use super::weights::LayerWeights;
use crate::kv::KvType;
use crate::Error;

/// Alignment of every arena buffer (and of the slack [`super::Plan::arena_bytes`] adds).
pub(crate) const ALIGN: usize = 64;

/// Which part of the plan a buffer is counted in.
#[derive(Clone, Copy, Debug)]
pub(super) enum Part {
    Kv,
    Activations,
    Scratch,
    Views,
}

/// Where buffers come from: [`Measure`] or [`Carver`].
pub(super) trait Region<'a> {
    /// A zero-filled buffer of `T`.
    type Slice<T: 'a>;
    /// An uninitialized buffer of `T`.
    type Uninit<T: 'a>;
    /// `n` zeroed elements of a plain-data type.
    fn take<T: bytemuck::Pod>(&mut self, part: Part, n: usize) -> Result<Self::Slice<T>, Error>;
    /// `n` uninitialized elements of any type (alignment at most [`ALIGN`]).
    fn take_uninit<T: 'a>(&mut self, part: Part, n: usize) -> Result<Self::Uninit<T>, Error>;
}

/// Bytes of `n` elements of `T`, padded to the alignment.
fn padded_bytes<T>(n: usize) -> Result<usize, Error> {
    const { assert!(core::mem::align_of::<T>() <= ALIGN) };
    n.checked_mul(size_of::<T>())
        .and_then(|b| b.checked_add(ALIGN - 1))
        .map(|b| b & !(ALIGN - 1))
        .ok_or(Error::Overflow)
}

/// Adds up the padded size of every buffer, per part.
#[derive(Default)]
pub(super) struct Measure {
    parts: PlanParts,
}

impl Measure {
    pub(super) fn parts(&self) -> PlanParts {
        self.parts
    }
    fn add<T>(&mut self, part: Part, n: usize) -> Result<(), Error> {
        let bytes = padded_bytes::<T>(n)?;
        let p = &mut self.parts;
        let slot = match part {
            Part::Kv => &mut p.kv_cache,
            Part::Activations => &mut p.activations,
            Part::Scratch => &mut p.scratch,
            Part::Views => &mut p.views,
        };
        *slot = slot.checked_add(bytes).ok_or(Error::Overflow)?;
        Ok(())
    }
}

impl<'a> Region<'a> for Measure {
    type Slice<T: 'a> = ();
    type Uninit<T: 'a> = ();
    fn take<T: bytemuck::Pod>(&mut self, part: Part, n: usize) -> Result<(), Error> {
        self.add::<T>(part, n)
    }
    fn take_uninit<T: 'a>(&mut self, part: Part, n: usize) -> Result<(), Error> {
        self.add::<T>(part, n)
    }
}

/// Splits aligned slices off the front of the arena.
pub(super) struct Carver<'a> {
    rest: &'a mut [u8],
}

impl<'a> Carver<'a> {
    pub(super) fn new(arena: &'a mut [u8]) -> Self {
        Carver { rest: arena }
    }

    /// The next `bytes` (padded to [`ALIGN`]), starting [`ALIGN`]-aligned.
    fn bytes<T>(&mut self, n: usize) -> Result<&'a mut [u8], Error> {
        let padded = padded_bytes::<T>(n)?;
        let rest = core::mem::take(&mut self.rest);
        let skip = rest.as_ptr().align_offset(ALIGN);
        if skip.checked_add(padded).is_none_or(|end| end > rest.len()) {
            return Err(Error::Overflow);
        }
        let (_, aligned) = rest.split_at_mut(skip);
        let (head, tail) = aligned.split_at_mut(padded);
        self.rest = tail;
        // `n * size_of::<T>()` did not overflow in `padded_bytes`.
        Ok(&mut head[..n * size_of::<T>()])
    }
}

impl<'a> Region<'a> for Carver<'a> {
    type Slice<T: 'a> = &'a mut [T];
    type Uninit<T: 'a> = &'a mut [MaybeUninit<T>];
    fn take<T: bytemuck::Pod>(&mut self, _: Part, n: usize) -> Result<&'a mut [T], Error> {
        let bytes = self.bytes::<T>(n)?;
        bytes.fill(0);
        // Aligned start, length a multiple of the element size: cannot fail.
        bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Overflow)
    }
    fn take_uninit<T: 'a>(&mut self, _: Part, n: usize) -> Result<&'a mut [MaybeUninit<T>], Error> {
        let bytes = self.bytes::<T>(n)?;
        // SAFETY: `bytes` is an exclusive borrow of `n * size_of::<T>()`
        // bytes starting `ALIGN`-aligned (at least `T`'s alignment, checked
        // in `padded_bytes`), for 'a; `MaybeUninit<T>` has no validity
        // requirement, so any bytes are a valid `[MaybeUninit<T>]` of `n`.
        Ok(unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<MaybeUninit<T>>(), n) })
    }
}

/// The KV cache buffers of each element type.
pub(super) enum KvBufs<'a, R: Region<'a>> {
    F32 {
        k: R::Slice<f32>,
        v: R::Slice<f32>,
    },
    F16 {
        k: R::Slice<half::f16>,
        v: R::Slice<half::f16>,
    },
    /// Quants and one f32 scale per head row.
    Q8 {
        k: R::Slice<i8>,
        v: R::Slice<i8>,
        ks: R::Slice<f32>,
        vs: R::Slice<f32>,
    },
}

/// Every buffer of a session (shapes in tokens; `b` is `max_batch`).
pub(super) struct Buffers<'a, 'm: 'a, R: Region<'a>> {
    /// Keys and values: `[n_layers * max_ctx, kv_dim]` each.
    pub kv: KvBufs<'a, R>,
    /// Int8 activations of the widest matmul input: quants `[b, groups * 32]`.
    pub act_qs: R::Slice<i8>,
    /// Their scales `[b, groups]`.
    pub act_d: R::Slice<f32>,
    /// Their per-group sums `[b, groups]`.
    pub act_sums: R::Slice<i32>,
    /// Residual stream `[b, d_model]`.
    pub x: R::Slice<f32>,
    /// Normed input of a block, and matmul outputs of width d `[b, d_model]`.
    pub xn: R::Slice<f32>,
    /// Queries `[b, q_dim]`.
    pub q: R::Slice<f32>,
    /// Attention output `[b, q_dim]`.
    pub att: R::Slice<f32>,
    /// Keys of the batch `[b, kv_dim]`.
    pub k: R::Slice<f32>,
    /// Values of the batch `[b, kv_dim]`.
    pub v: R::Slice<f32>,
    /// FFN gate `[b, ffn_dim]`.
    pub gate: R::Slice<f32>,
    /// FFN up `[b, ffn_dim]`.
    pub up: R::Slice<f32>,
    /// Per thread: scores `[max_ctx]`, a rotated query head `[head_dim]`,
    /// a sink RoPE row `[head_dim]`.
    pub scores: R::Slice<f32>,
    /// Per thread: one dequantized weight row `[widest input]`.
    pub rows: R::Slice<f32>,
    /// Logits `[vocab]` (`[b, vocab]` with `logits_all`).
    pub logits: R::Slice<f32>,
    /// RoPE inverse frequencies `[head_dim / 2]`.
    pub inv_freq: R::Slice<f32>,
    /// RoPE cosines and sines per batch token `[b, head_dim]`.
    pub rope: R::Slice<f32>,
    /// Each layer's tensor views `[n_layers]`, filled by `Session::new`.
    pub layers: R::Uninit<LayerWeights<'m>>,
}

/// Takes every buffer of a session from `region`, in one fixed order.
pub(super) fn carve<'a, 'm, R: Region<'a>>(
    region: &mut R,
    l: &Layout,
    kv: KvType,
    m: &ModelConfig,
) -> Result<Buffers<'a, 'm, R>, Error>
where
    'm: 'a,
{
    let n_layers = m.n_layers as usize;
    let kv_elems = l.kv_per_layer.checked_mul(n_layers).ok_or(Error::Overflow)?;
    let kv = match kv {
        KvType::F32 => KvBufs::F32 { k: region.take(Part::Kv, kv_elems)?, v: region.take(Part::Kv, kv_elems)? },
        KvType::F16 => KvBufs::F16 { k: region.take(Part::Kv, kv_elems)?, v: region.take(Part::Kv, kv_elems)? },
        KvType::Q8 => {
            let heads = kv_elems / (m.head_dim as usize).max(1);
            KvBufs::Q8 {
                k: region.take(Part::Kv, kv_elems)?,
                v: region.take(Part::Kv, kv_elems)?,
                ks: region.take(Part::Kv, heads)?,
                vs: region.take(Part::Kv, heads)?,
            }
        }
    };
    let act_quants = l.act_groups.checked_mul(32).ok_or(Error::Overflow)?;
    use Part::{Activations as A, Scratch as S};
    Ok(Buffers {
        kv,
        act_qs: region.take(A, act_quants)?,
        act_d: region.take(A, l.act_groups)?,
        act_sums: region.take(A, l.act_groups)?,
        x: region.take(A, l.x)?,
        xn: region.take(A, l.x)?,
        q: region.take(A, l.q)?,
        att: region.take(A, l.q)?,
        k: region.take(A, l.kv)?,
        v: region.take(A, l.kv)?,
        gate: region.take(A, l.ffn)?,
        up: region.take(A, l.ffn)?,
        scores: region.take(S, l.scores)?,
        rows: region.take(S, l.rows)?,
        logits: region.take(S, l.logits)?,
        inv_freq: region.take(S, l.inv_freq)?,
        rope: region.take(S, l.rope)?,
        layers: region.take_uninit(Part::Views, n_layers)?,
    })
}
