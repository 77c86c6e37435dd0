//! Saving and restoring a session: a header (magic, version, cache
//! settings, the model's checksum), the occupied KV cache slots of every
//! layer and the last logits, under a CRC.

use super::Session;
use crate::kv::KvShape;
use crate::Error;

const STATE_MAGIC: [u8; 8] = *b"FRTSTATE";
const STATE_HEADER: usize = core::mem::size_of::<StateHeader>();
const STATE_CRC_AT: usize = 44;

/// Header of a saved session state (little-endian).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StateHeader {
    magic: [u8; 8],
    version: u32,
    kv: u32,
    max_ctx: u64,
    sinks: u64,
    pos: u64,
    model_crc: u32,
    /// CRC-32 of everything after the header.
    payload_crc: u32,
    reserved: [u8; 16],
}

const _: () = assert!(STATE_HEADER == 64);
const _: () = assert!(core::mem::offset_of!(StateHeader, payload_crc) == STATE_CRC_AT);

impl Session<'_, '_> {
    /// Bytes [`Session::save_state`] needs for the current state.
    pub fn state_len(&self) -> usize {
        let (used, per_layer) = self.state_geometry();
        let c = self.model.config();
        STATE_HEADER + per_layer * used * c.n_layers as usize + c.vocab_size as usize * 4
    }

    fn state_geometry(&self) -> (usize, usize) {
        let c = self.model.config();
        let used = self.pos.min(self.plan.cfg.max_ctx);
        let per_slot = self.plan.cfg.kv.slot_bytes(c.n_kv_heads as usize, c.head_dim as usize).unwrap_or(0);
        (used, per_slot)
    }

    /// Saves the session's state (positions, the occupied KV cache slots and
    /// the last logits) into `out`; returns the bytes written. A device can
    /// process a system prompt once and resume from the saved bytes.
    pub fn save_state(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.state_len();
        if out.len() < len {
            return Err(Error::BufferTooSmall { needed: len, given: out.len() });
        }
        let c = *self.model.config();
        let (used, _) = self.state_geometry();
        let shape = KvShape { kv_dim: c.kv_dim() as usize, head_dim: c.head_dim as usize };
        let mut w = 0usize;
        let mut put = |bytes: &[u8]| {
            out[w..w + bytes.len()].copy_from_slice(bytes);
            w += bytes.len();
        };
        let header = StateHeader {
            magic: STATE_MAGIC,
            version: 1,
            kv: self.plan.cfg.kv.code(),
            max_ctx: self.plan.cfg.max_ctx as u64,
            sinks: self.plan.sinks() as u64,
            pos: self.pos as u64,
            model_crc: self.model.file().header().meta_crc,
            payload_crc: 0,
            reserved: [0; 16],
        };
        put(bytemuck::bytes_of(&header));
        for layer in 0..c.n_layers as usize {
            for part in self.kv.row_bytes(layer * self.plan.cfg.max_ctx, used, shape) {
                put(part);
            }
        }
        put(bytemuck::cast_slice(self.logits()));
        let crc = ferrite_format::checksum(&out[STATE_HEADER..len]);
        out[STATE_CRC_AT..STATE_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(len)
    }

    /// Restores a state saved by [`Session::save_state`] from a session with
    /// the same model and the same cache settings. Afterwards the session
    /// continues exactly as the saved one would have.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let bad = |why| Err(Error::BadState { why });
        if bytes.len() < STATE_HEADER {
            return bad("shorter than the state header");
        }
        let h: StateHeader = bytemuck::pod_read_unaligned(&bytes[..STATE_HEADER]);
        if h.magic != STATE_MAGIC || h.version != 1 {
            return bad("not a Ferrite session state (magic or version)");
        }
        if h.model_crc != self.model.file().header().meta_crc {
            return bad("saved from a different model file");
        }
        if h.kv != self.plan.cfg.kv.code()
            || h.max_ctx != self.plan.cfg.max_ctx as u64
            || h.sinks != self.plan.sinks() as u64
        {
            return bad("saved with different KV cache settings (type, max_ctx or sinks)");
        }
        let Ok(pos) = usize::try_from(h.pos) else { return bad("position out of range") };
        let c = *self.model.config();
        let used = pos.min(self.plan.cfg.max_ctx);
        let per_slot = self.plan.cfg.kv.slot_bytes(c.n_kv_heads as usize, c.head_dim as usize).unwrap_or(0);
        let vocab = c.vocab_size as usize;
        let len = used
            .checked_mul(per_slot)
            .and_then(|b| b.checked_mul(c.n_layers as usize))
            .and_then(|b| b.checked_add(STATE_HEADER + vocab * 4));
        if len != Some(bytes.len()) {
            return bad("length does not match its header");
        }
        if ferrite_format::checksum(&bytes[STATE_HEADER..]) != h.payload_crc {
            return bad("checksum mismatch (corrupted)");
        }
        let shape = KvShape { kv_dim: c.kv_dim() as usize, head_dim: c.head_dim as usize };
        let mut r = STATE_HEADER;
        for layer in 0..c.n_layers as usize {
            for part in self.kv.row_bytes_mut(layer * self.plan.cfg.max_ctx, used, shape) {
                part.copy_from_slice(&bytes[r..r + part.len()]);
                r += part.len();
            }
        }
        let logits: &mut [u8] = bytemuck::cast_slice_mut(&mut self.logits[..vocab]);
        logits.copy_from_slice(&bytes[r..r + vocab * 4]);
        self.pos = pos;
        Ok(())
    }
}
