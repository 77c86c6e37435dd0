//! BPE: the pre-tokenizer's chunks (byte-level) or the whole text between
//! added tokens (SentencePiece) become tokens, and the adjacent pair with
//! the lowest merge rank is merged, leftmost on ties, until none merges.
//! Merging runs in place in the caller's output buffer, with the pair
//! ranks cached in its spare slots or on the stack when there is room.

use ferrite_format::tokenizer::PreTokenizer;

use super::pretokenize::{digit_pieces, gpt2_chunks, llama3_chunks};
use super::{push, Tokenizer, TokenizerError};

/// Tokens of a chunk merged on the stack (with their pair ranks) when the
/// caller's buffer has no room to merge in place: 2 × 64 × 4 = 512 bytes.
pub(super) const STACK_TOKENS: usize = 64;

/// Rank of a pair that has no merge rule (validated ranks are below
/// `n_merges`, hence below this).
const NO_MERGE: u32 = u32::MAX;

impl<'a> Tokenizer<'a> {
    /// Pre-tokenizes `text` (no added tokens in it) and appends each chunk's
    /// BPE tokens at `out[*n..]`.
    pub(super) fn encode_text_into(&self, text: &str, out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
        if self.is_spm() {
            return self.encode_spm(text, out, n);
        }
        match self.view.pretokenizer() {
            PreTokenizer::None => self.encode_chunk(text.as_bytes(), out, n),
            PreTokenizer::Gpt2 => {
                for chunk in gpt2_chunks(text) {
                    self.encode_chunk(chunk.as_bytes(), out, n)?;
                }
                Ok(())
            }
            PreTokenizer::Gpt2Digits => {
                for piece in digit_pieces(text) {
                    for chunk in gpt2_chunks(piece) {
                        self.encode_chunk(chunk.as_bytes(), out, n)?;
                    }
                }
                Ok(())
            }
            PreTokenizer::Llama3 | PreTokenizer::Qwen2 => {
                let max_digits = if self.view.pretokenizer() == PreTokenizer::Llama3 { 3 } else { 1 };
                for chunk in llama3_chunks(text, max_digits) {
                    self.encode_chunk(chunk.as_bytes(), out, n)?;
                }
                Ok(())
            }
        }
    }

    /// SentencePiece-style BPE of `text` (no added tokens in it), appended
    /// at `out[*n..]`: a token per character (a space prepended when the
    /// section says so), byte fallback for characters without one, then
    /// ranked merging in place.
    fn encode_spm(&self, text: &str, out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let start = *n;
        if self.view.add_prefix_space() {
            self.push_spm_char(' ', out, n)?;
        }
        for c in text.chars() {
            self.push_spm_char(c, out, n)?;
        }
        let (tokens, tail) = out[start..].split_at_mut(*n - start);
        let merged = if tail.len() + 1 >= tokens.len() {
            self.merge_all(tokens, tail)
        } else if tokens.len() <= STACK_TOKENS {
            self.merge_all(tokens, &mut [0u32; STACK_TOKENS])
        } else {
            self.merge_all(tokens, &mut [])
        };
        *n = start + merged;
        Ok(())
    }

    /// The token of character `c`, or its bytes' byte-fallback tokens, or
    /// the unknown token; nothing if there is neither (as HF's BPE).
    fn push_spm_char(&self, c: char, out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        if let Some(id) = self.view.find(bytes) {
            return push(out, n, id);
        }
        if self.view.byte_fallback() {
            for &b in bytes {
                if let Some(id) = self.view.byte_token(b).or(self.view.unk()) {
                    push(out, n, id)?;
                }
            }
            return Ok(());
        }
        match self.view.unk() {
            Some(id) => push(out, n, id),
            None => Ok(()),
        }
    }

    /// BPE of one pre-tokenized chunk, appended at `out[*n..]`.
    fn encode_chunk(&self, chunk: &[u8], out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.view.ignore_merges() {
            if let Some(id) = self.view.find(chunk) {
                return push(out, n, id);
            }
        }
        let too_small = TokenizerError::BufferTooSmall { capacity: out.len() };
        let free = out.get_mut(*n..).ok_or(too_small)?;
        if free.len() >= chunk.len() {
            // In place; the pair ranks live past the chunk when there is
            // room there, else on the stack, else they are recomputed.
            let (tokens, tail) = free.split_at_mut(chunk.len());
            let len = self.byte_tokens(chunk, tokens);
            let tokens = &mut tokens[..len];
            let merged = if tail.len() + 1 >= len {
                self.merge_all(tokens, tail)
            } else {
                self.merge_all(tokens, &mut [0u32; STACK_TOKENS])
            };
            *n += merged;
            return Ok(());
        }
        if chunk.len() > STACK_TOKENS {
            return Err(too_small);
        }
        let mut tokens = [0u32; STACK_TOKENS];
        let len = self.byte_tokens(chunk, &mut tokens);
        let merged = self.merge_all(&mut tokens[..len], &mut [0u32; STACK_TOKENS]);
        let dst = free.get_mut(..merged).ok_or(too_small)?;
        dst.copy_from_slice(&tokens[..merged]);
        *n += merged;
        Ok(())
    }

    /// The token of each byte of `chunk`, written to the front of `tokens`
    /// (as long as `chunk`); returns how many. A byte without a token
    /// becomes the unknown token, or is dropped if there is none, as HF's
    /// BPE does (without `fuse_unk`).
    fn byte_tokens(&self, chunk: &[u8], tokens: &mut [u32]) -> usize {
        let unk = self.view.unk();
        let mut len = 0;
        for &b in chunk {
            if let Some(id) = self.view.byte_token(b).or(unk) {
                if let Some(slot) = tokens.get_mut(len) {
                    *slot = id;
                    len += 1;
                }
            }
        }
        len
    }

    /// Rank of merging `left` then `right`, or [`NO_MERGE`].
    fn rank(&self, left: u32, right: u32) -> u32 {
        work(1);
        self.view.merge(left, right).map_or(NO_MERGE, |(rank, _)| rank)
    }

    /// Replaces the pair at `at` of `tokens[..len]` by its merge and closes
    /// the gap; `false` (nothing changed) when the pair has no rule.
    fn merge_pair(&self, tokens: &mut [u32], len: usize, at: usize) -> bool {
        let Some((_, result)) = self.view.merge(tokens[at], tokens[at + 1]) else {
            return false;
        };
        tokens[at] = result;
        tokens.copy_within(at + 2..len, at + 1);
        true
    }

    /// [`Tokenizer::merge_all`] in O(n log n): the tokens stay at their
    /// positions as a doubly linked list, and a binary heap of the pairs
    /// ordered by (rank, position) — position order is the tokens' order,
    /// so ties go to the leftmost — yields the next merge; each merge
    /// changes at most the two pairs next to it. `scratch` holds
    /// [`HEAP_SLOTS`] slots per token: next, prev, pair rank, the heap, and
    /// each position's place in it.
    fn merge_heap(&self, tokens: &mut [u32], scratch: &mut [u32]) -> usize {
        let n = tokens.len();
        let (next, rest) = scratch.split_at_mut(n);
        let (prev, rest) = rest.split_at_mut(n);
        let (rank, rest) = rest.split_at_mut(n);
        let (heap, rest) = rest.split_at_mut(n);
        let place = &mut rest[..n];
        let mut h = Heap { items: heap, len: 0, rank, place };
        for i in 0..n {
            next[i] = if i + 1 < n { (i + 1) as u32 } else { END };
            prev[i] = if i > 0 { (i - 1) as u32 } else { END };
            h.place[i] = END;
            h.rank[i] = if i + 1 < n { self.rank(tokens[i], tokens[i + 1]) } else { NO_MERGE };
            if h.rank[i] != NO_MERGE {
                h.items[h.len] = i as u32;
                h.place[i] = h.len as u32;
                h.len += 1;
            }
        }
        for k in (0..h.len / 2).rev() {
            h.down(k);
        }
        while let Some(i) = h.pop() {
            let i = i as usize;
            let j = next[i] as usize;
            let Some((_, merged)) = self.view.merge(tokens[i], tokens[j]) else { break };
            tokens[i] = merged;
            // `j` is gone: its pair with its right neighbour too.
            h.remove(j);
            next[i] = next[j];
            if next[i] != END {
                prev[next[i] as usize] = i as u32;
            }
            if next[i] != END {
                let r = self.rank(tokens[i], tokens[next[i] as usize]);
                h.set(i, r);
            }
            if prev[i] != END {
                let p = prev[i] as usize;
                let r = self.rank(tokens[p], tokens[i]);
                h.set(p, r);
            }
        }
        // The live tokens, in order, to the front.
        let mut len = 0;
        let mut at = 0u32;
        while at != END {
            tokens[len] = tokens[at as usize];
            len += 1;
            at = next[at as usize];
        }
        len
    }

    /// Merges `tokens` in place: the adjacent pair with the lowest rank
    /// first, the leftmost of equal ones, until no pair has a rule. Returns
    /// the new length. With `scratch` of at least [`HEAP_SLOTS`] per token
    /// this is [`Tokenizer::merge_heap`], O(n log n); otherwise `scratch`
    /// caches the rank of each pair when it holds `tokens.len() - 1`
    /// entries (each merge then scans the ranks: O(n²) in the worst case),
    /// or ranks are recomputed each round.
    pub(super) fn merge_all(&self, tokens: &mut [u32], ranks: &mut [u32]) -> usize {
        let mut len = tokens.len();
        if len < 2 {
            return len;
        }
        if len > STACK_TOKENS && ranks.len() / HEAP_SLOTS >= len {
            return self.merge_heap(tokens, ranks);
        }
        match ranks.get_mut(..len - 1) {
            Some(ranks) => {
                for (i, rank) in ranks.iter_mut().enumerate() {
                    *rank = self.rank(tokens[i], tokens[i + 1]);
                }
                while len >= 2 {
                    work(2 * len);
                    let (at, best) = lowest(&ranks[..len - 1]);
                    if best == NO_MERGE || !self.merge_pair(tokens, len, at) {
                        break;
                    }
                    // Pair `at + 1` is gone; pairs after it move down by one.
                    if at + 2 < len {
                        ranks.copy_within(at + 2..len - 1, at + 1);
                    }
                    len -= 1;
                    if at > 0 {
                        ranks[at - 1] = self.rank(tokens[at - 1], tokens[at]);
                    }
                    if at + 1 < len {
                        ranks[at] = self.rank(tokens[at], tokens[at + 1]);
                    }
                }
            }
            None => {
                while len >= 2 {
                    work(len);
                    let mut best = NO_MERGE;
                    let mut at = 0;
                    for i in 0..len - 1 {
                        let rank = self.rank(tokens[i], tokens[i + 1]);
                        if rank < best {
                            best = rank;
                            at = i;
                        }
                    }
                    if best == NO_MERGE || !self.merge_pair(tokens, len, at) {
                        break;
                    }
                    len -= 1;
                }
            }
        }
        len
    }
}

/// Counts `n` steps of merging work (rule lookups, slots scanned or moved,
/// heap steps), for the test that merging is not quadratic.
#[inline(always)]
fn work(n: usize) {
    #[cfg(test)]
    tests::WORK.with(|w| w.set(w.get() + n));
    let _ = n;
}

/// Scratch slots per token that [`Tokenizer::merge_heap`] needs.
pub(super) const HEAP_SLOTS: usize = 5;

/// No position (the end of the list; not in the heap).
const END: u32 = u32::MAX;

/// A binary min-heap of pair positions keyed by `(rank[pos], pos)`, with
/// each position's index in it (`place`) so that a pair's rank can change.
struct Heap<'s> {
    items: &'s mut [u32],
    len: usize,
    rank: &'s mut [u32],
    place: &'s mut [u32],
}

impl Heap<'_> {
    fn less(&self, a: u32, b: u32) -> bool {
        (self.rank[a as usize], a) < (self.rank[b as usize], b)
    }
    fn swap(&mut self, a: usize, b: usize) {
        work(1);
        self.items.swap(a, b);
        self.place[self.items[a] as usize] = a as u32;
        self.place[self.items[b] as usize] = b as u32;
    }
    fn up(&mut self, mut k: usize) {
        while k > 0 {
            let parent = (k - 1) / 2;
            if !self.less(self.items[k], self.items[parent]) {
                break;
            }
            self.swap(k, parent);
            k = parent;
        }
    }
    fn down(&mut self, mut k: usize) {
        loop {
            let (l, r) = (2 * k + 1, 2 * k + 2);
            let mut best = k;
            if l < self.len && self.less(self.items[l], self.items[best]) {
                best = l;
            }
            if r < self.len && self.less(self.items[r], self.items[best]) {
                best = r;
            }
            if best == k {
                return;
            }
            self.swap(k, best);
            k = best;
        }
    }
    /// Takes the position of the lowest-ranked pair (leftmost of equal).
    fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let top = self.items[0];
        self.remove(top as usize);
        Some(top)
    }
    /// Drops `pos` from the heap if it is there.
    fn remove(&mut self, pos: usize) {
        let k = self.place[pos];
        if k == END {
            return;
        }
        let k = k as usize;
        self.len -= 1;
        if k != self.len {
            self.swap(k, self.len);
            self.down(k);
            self.up(k);
        }
        self.place[pos] = END;
    }
    /// Gives the pair at `pos` rank `r` (out of the heap when it has none).
    fn set(&mut self, pos: usize, r: u32) {
        self.remove(pos);
        self.rank[pos] = r;
        if r != NO_MERGE {
            self.items[self.len] = pos as u32;
            self.place[pos] = self.len as u32;
            self.len += 1;
            self.up(self.len - 1);
        }
    }
}

/// Index and value of the smallest rank, the first of equal ones.
fn lowest(ranks: &[u32]) -> (usize, u32) {
    let mut best = NO_MERGE;
    let mut at = 0;
    for (i, &rank) in ranks.iter().enumerate() {
        if rank < best {
            best = rank;
            at = i;
        }
    }
    (at, best)
}

#[cfg(test)]
pub(super) mod tests {
    extern crate std;
    use std::cell::Cell;
    use std::vec;

    std::thread_local! {
        /// Merging work done on this thread (see `work`).
        pub(crate) static WORK: Cell<usize> = const { Cell::new(0) };
    }

    /// Merging work to encode `text` with `t` into `room` slots.
    pub(crate) fn work_of(t: &super::Tokenizer<'_>, text: &str, room: usize) -> usize {
        let mut out = vec![0u32; room];
        WORK.with(|n| n.set(0));
        t.encode(text, &mut out).unwrap_or_else(|e| panic!("{e}"));
        WORK.with(Cell::get)
    }
}
