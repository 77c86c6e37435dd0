//! The pre-tokenizers of byte-level BPE, written by hand: GPT-2's regex,
//! Llama 3's and Qwen2's, and HF's `Digits(individual_digits)`, with the
//! Unicode general categories HF's Oniguruma uses.

use unicode_general_category::{get_general_category, GeneralCategory};

/// The classes GPT-2's regex tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CharClass {
    /// `\p{L}`: general category Lu, Ll, Lt, Lm or Lo.
    Letter,
    /// `\p{N}`: Nd, Nl or No.
    Number,
    /// `\s`: the White_Space property.
    Space,
    /// Everything else: `[^\s\p{L}\p{N}]`.
    Other,
}

fn char_class(c: char) -> CharClass {
    if c.is_ascii_alphabetic() {
        return CharClass::Letter;
    }
    if c.is_ascii_digit() {
        return CharClass::Number;
    }
    // White_Space, as Oniguruma's `\s` (it includes U+000B and U+0085).
    if c.is_whitespace() {
        return CharClass::Space;
    }
    if c.is_ascii() {
        return CharClass::Other;
    }
    match get_general_category(c) {
        GeneralCategory::UppercaseLetter
        | GeneralCategory::LowercaseLetter
        | GeneralCategory::TitlecaseLetter
        | GeneralCategory::ModifierLetter
        | GeneralCategory::OtherLetter => CharClass::Letter,
        GeneralCategory::DecimalNumber | GeneralCategory::LetterNumber | GeneralCategory::OtherNumber => {
            CharClass::Number
        }
        _ => CharClass::Other,
    }
}

/// Byte length of the run of characters of class `class` at the start of `s`.
fn run_len(s: &str, class: CharClass) -> usize {
    s.chars().take_while(|&c| char_class(c) == class).map(char::len_utf8).sum()
}

/// GPT-2's contractions, in the regex's order (case-sensitive: `'S` is not one).
const CONTRACTIONS: [&[u8]; 7] = [b"s", b"t", b"re", b"ve", b"m", b"ll", b"d"];

/// Byte length of the match of GPT-2's regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// at the start of `s`; 0 only if `s` is empty. Every character is in one
/// of the classes, so a match always starts at the first character and the
/// chunks tile the text.
fn gpt2_match_len(s: &str) -> usize {
    let Some(first) = s.chars().next() else {
        return 0;
    };
    if first == '\'' {
        let after = s.as_bytes().get(1..).unwrap_or_default();
        if let Some(suffix) = CONTRACTIONS.iter().find(|suffix| after.starts_with(suffix)) {
            return 1 + suffix.len();
        }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: one optional space, then a
    // run of one class.
    let (prefix, body) = if first == ' ' { (1, s.get(1..).unwrap_or_default()) } else { (0, s) };
    if let Some(c) = body.chars().next() {
        let class = char_class(c);
        if class != CharClass::Space {
            return prefix + run_len(body, class);
        }
    }
    // Whitespace. `\s+(?!\S)`: the whole run if it ends the text, else the
    // run less its last character (which then leads the next chunk, e.g.
    // " word"); if that leaves nothing, `\s+` takes the single character.
    let run = run_len(s, CharClass::Space);
    if run == s.len() {
        return run;
    }
    let last = s.get(..run).and_then(|r| r.chars().next_back()).map_or(0, char::len_utf8);
    if run > last {
        run - last
    } else {
        run
    }
}

/// Byte length of the match of Llama 3's regex
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// at the start of `s` (with `max_digits` = 3; Qwen2's regex is the same
/// with 1); 0 only if `s` is empty. As with GPT-2's, some alternative
/// always matches at the first character, so the chunks tile the text.
fn llama3_match_len(s: &str, max_digits: usize) -> usize {
    let Some(first) = s.chars().next() else {
        return 0;
    };
    let is_newline = |c: char| c == '\r' || c == '\n';
    // `(?i:'s|'t|'re|'ve|'m|'ll|'d)`.
    if first == '\'' {
        let after = s.as_bytes().get(1..).unwrap_or_default();
        let hit = CONTRACTIONS
            .iter()
            .find(|suffix| after.get(..suffix.len()).is_some_and(|a| a.eq_ignore_ascii_case(suffix)));
        if let Some(suffix) = hit {
            return 1 + suffix.len();
        }
    }
    let class = char_class(first);
    let rest = s.get(first.len_utf8()..).unwrap_or_default();
    // `[^\r\n\p{L}\p{N}]?\p{L}+`.
    if class == CharClass::Letter {
        return run_len(s, CharClass::Letter);
    }
    if class != CharClass::Number
        && !is_newline(first)
        && rest.chars().next().map(char_class) == Some(CharClass::Letter)
    {
        return first.len_utf8() + run_len(rest, CharClass::Letter);
    }
    // `\p{N}{1,3}`.
    if class == CharClass::Number {
        return s
            .chars()
            .take(max_digits)
            .take_while(|&c| char_class(c) == CharClass::Number)
            .map(char::len_utf8)
            .sum();
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`.
    let (prefix, body) = if first == ' ' { (1, rest) } else { (0, s) };
    if body.chars().next().map(char_class) == Some(CharClass::Other) {
        let len = prefix + run_len(body, CharClass::Other);
        let newlines = s.get(len..).unwrap_or_default().bytes().take_while(|&b| b == b'\r' || b == b'\n').count();
        return len + newlines;
    }
    // Whitespace. `\s*[\r\n]+`: up to the run's last CR/LF.
    let run = run_len(s, CharClass::Space);
    let run_text = s.get(..run).unwrap_or_default();
    if let Some(last) = run_text.rfind(is_newline) {
        return last + 1;
    }
    // `\s+(?!\S)`, then `\s+`, as in GPT-2's regex.
    if run == s.len() {
        return run;
    }
    let last = run_text.chars().next_back().map_or(0, char::len_utf8);
    if run > last {
        run - last
    } else {
        run
    }
}

/// The pieces `piece_len` cuts a text into, front to back: each is as long
/// as `piece_len` says of the text that remains (0: nothing remains). Every
/// pre-tokenizer here is one such length function.
pub(super) struct Pieces<'t, F> {
    rest: &'t str,
    piece_len: F,
}

impl<'t, F: Fn(&str) -> usize> Iterator for Pieces<'t, F> {
    type Item = &'t str;
    fn next(&mut self) -> Option<&'t str> {
        let len = (self.piece_len)(self.rest);
        if len == 0 {
            return None;
        }
        let (piece, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(piece)
    }
}

/// The chunks of GPT-2's regex over a text.
pub(super) fn gpt2_chunks(text: &str) -> Pieces<'_, fn(&str) -> usize> {
    Pieces { rest: text, piece_len: gpt2_match_len }
}

/// The chunks of Llama 3's regex (`max_digits` 3) or Qwen2's (1) over a
/// text.
pub(super) fn llama3_chunks(text: &str, max_digits: usize) -> Pieces<'_, impl Fn(&str) -> usize> {
    Pieces { rest: text, piece_len: move |s: &str| llama3_match_len(s, max_digits) }
}

/// HF's `Digits(individual_digits = true)`: every numeric character
/// ([`char::is_numeric`]) alone, the text between them as one piece.
pub(super) fn digit_pieces(text: &str) -> Pieces<'_, fn(&str) -> usize> {
    Pieces { rest: text, piece_len: digit_piece_len }
}

/// Byte length of the piece of [`digit_pieces`] at the start of `s`; 0 only
/// if `s` is empty.
fn digit_piece_len(s: &str) -> usize {
    match s.chars().next() {
        None => 0,
        Some(first) if first.is_numeric() => first.len_utf8(),
        Some(_) => s.chars().take_while(|c| !c.is_numeric()).map(char::len_utf8).sum(),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn gpt2_and_digit_pieces() {
        fn chunks(s: &str) -> Vec<&str> {
            gpt2_chunks(s).collect()
        }
        assert_eq!(chunks("Hello world"), ["Hello", " world"]);
        assert_eq!(chunks("it's I'M we'll"), ["it", "'s", " I", "'", "M", " we", "'ll"]);
        assert_eq!(chunks("a   b\t\tc  "), ["a", "  ", " b", "\t", "\t", "c", "  "]);
        assert_eq!(chunks("x \n\ny"), ["x", " \n", "\n", "y"]);
        assert_eq!(chunks(" 42!? é"), [" 42", "!?", " é"]);
        assert_eq!(chunks("'''s"), ["'''", "s"]);
        assert_eq!(chunks("\u{3000}\u{3000}日本"), ["\u{3000}", "\u{3000}", "日本"]);
        fn digits(s: &str) -> Vec<&str> {
            digit_pieces(s).collect()
        }
        assert_eq!(digits("ab 12c٣"), ["ab ", "1", "2", "c", "٣"]);
    }
    #[test]
    fn llama3_and_qwen2_chunks() {
        fn chunks(s: &str, max_digits: usize) -> Vec<&str> {
            let v: Vec<&str> = llama3_chunks(s, max_digits).collect();
            // The chunks tile the text: no piece of length 0 stopped them early.
            assert_eq!(v.concat(), s);
            v
        }
        assert_eq!(chunks("Hello world", 3), ["Hello", " world"]);
        assert_eq!(chunks("it's I'M we'LL", 3), ["it", "'s", " I", "'M", " we", "'LL"]);
        assert_eq!(chunks("12345 x", 3), ["123", "45", " x"]);
        assert_eq!(chunks("12345 x", 1), ["1", "2", "3", "4", "5", " x"]);
        assert_eq!(chunks("a  \n\n  b\t\tc  ", 3), ["a", "  \n\n", " ", " b", "\t", "\tc", "  "]);
        assert_eq!(chunks("!abc !!x ...\n\nd", 3), ["!abc", " !!", "x", " ...\n\n", "d"]);
        assert_eq!(chunks(" 42", 3), [" ", "42"]);
    }
}
