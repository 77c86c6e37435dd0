//! Streaming decoded bytes out as text, one token at a time.

/// Turns a stream of token bytes into text, carrying an unfinished UTF-8
/// character (at most 3 bytes) from one token to the next, so a CLI can
/// print token by token. Invalid bytes become U+FFFD exactly as
/// `String::from_utf8_lossy` would replace them in the whole stream.
///
/// ```
/// use ferrite_runtime::tokenizer::Utf8Stream;
/// let mut text = String::new();
/// let mut stream = Utf8Stream::new();
/// for bytes in [&b"caf\xc3"[..], b"\xa9!"] {
///     stream.push(bytes, |s| text.push_str(s));
/// }
/// stream.finish(|s| text.push_str(s));
/// assert_eq!(text, "café!");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Stream {
    carry: [u8; 4],
    len: usize,
}

impl Utf8Stream {
    /// An empty stream.
    pub const fn new() -> Self {
        Self { carry: [0; 4], len: 0 }
    }

    /// Bytes of an unfinished character held back so far (0 to 3).
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Feeds `bytes`; `emit` receives every complete piece of text (it may
    /// be called several times, or not at all).
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        // Finish the carried character first, byte by byte.
        while self.len > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            self.carry[self.len % 4] = b;
            match core::str::from_utf8(&self.carry[..self.len + 1]) {
                Ok(s) => {
                    emit(s);
                    self.len = 0;
                    bytes = rest;
                }
                // Still a valid prefix: keep it.
                Err(e) if e.error_len().is_none() && self.len < 3 => {
                    self.len += 1;
                    bytes = rest;
                }
                // `b` cannot continue the carried prefix: the prefix is one
                // ill-formed sequence and `b` starts afresh below.
                Err(_) => {
                    emit(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
                    self.len = 0;
                }
            }
        }
        loop {
            match core::str::from_utf8(bytes) {
                Ok(s) => {
                    if !s.is_empty() {
                        emit(s);
                    }
                    return;
                }
                Err(e) => {
                    let (valid, after) = bytes.split_at(e.valid_up_to());
                    if let Ok(s) = core::str::from_utf8(valid) {
                        if !s.is_empty() {
                            emit(s);
                        }
                    }
                    match e.error_len() {
                        Some(bad) => {
                            emit(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
                            bytes = after.get(bad..).unwrap_or_default();
                        }
                        None => {
                            // An unfinished character ends the input (1 to 3 bytes).
                            let keep = after.len().min(3);
                            self.carry[..keep].copy_from_slice(&after[..keep]);
                            self.len = keep;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: an unfinished character left over is emitted as
    /// U+FFFD. The stream is empty afterwards and may be reused.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if self.len > 0 {
            emit(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
            self.len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;
    use std::vec::Vec;

    use super::*;

    fn stream(pieces: &[&[u8]]) -> String {
        let mut text = String::new();
        let mut s = Utf8Stream::new();
        for p in pieces {
            s.push(p, |t| text.push_str(t));
        }
        s.finish(|t| text.push_str(t));
        text
    }

    #[test]
    fn utf8_stream_split_characters() {
        // "é" (2 bytes), "日" (3), "😀" (4) split across tokens at every point.
        let text = "é日😀";
        let bytes = text.as_bytes();
        for cut1 in 0..=bytes.len() {
            for cut2 in cut1..=bytes.len() {
                let got = stream(&[&bytes[..cut1], &bytes[cut1..cut2], &bytes[cut2..]]);
                assert_eq!(got, text, "cuts {cut1} {cut2}");
            }
        }
        // One byte per token.
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(stream(&single), text);
    }

    #[test]
    fn utf8_stream_matches_lossy() {
        let cases: [&[u8]; 9] = [
            b"\xf0\x9f\x98",
            b"a\xf0\x9fb",
            b"\xe6\x97\xa5\xff\xe6",
            b"\xc3",
            b"\xed\xa0\x80x",
            b"\xf4\x90\x80\x80",
            b"\xe0\x80\xaf",
            b"\xc3\xc3\xa9",
            b"\x80\x80\xf0\x9f\x98\x80",
        ];
        for case in cases {
            let expected = String::from_utf8_lossy(case).into_owned();
            for cut in 0..=case.len() {
                let (a, b) = case.split_at(cut);
                assert_eq!(stream(&[a, b]), expected, "{case:?} cut at {cut}");
            }
            let single: Vec<&[u8]> = case.chunks(1).collect();
            assert_eq!(stream(&single), expected, "{case:?} byte by byte");
        }
    }
}
