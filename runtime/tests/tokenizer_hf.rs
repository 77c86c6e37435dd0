//! Ferrite's tokenizer against Hugging Face `tokenizers` (the Rust crate,
//! with Oniguruma as HF's Python wheels use) on SmolLM2's `tokenizer.json`:
//! the section is built by the converter, validated by the format crate and
//! driven by `ferrite_runtime::tokenizer`. Every generated string must encode
//! to HF's ids exactly and decode back to its own bytes.

use ferrite_runtime::format::writer::AlignedBytes;
use ferrite_runtime::format::TokenizerView;
use ferrite_runtime::tokenizer::{Tokenizer, TokenizerError, Utf8Stream};
use ferrite_test_support::fixtures::smollm2_fixture as fixture_dir;
use ferrite_test_support::rng::SplitMix64;

struct Fixture {
    section: AlignedBytes,
    vocab_size: u32,
    /// HF as shipped: added tokens matched.
    hf: tokenizers::Tokenizer,
    /// HF with `encode_special_tokens = true`: special tokens encoded as text.
    hf_specials_as_text: tokenizers::Tokenizer,
}

impl Fixture {
    fn load() -> Self {
        let dir = fixture_dir();
        let hf_tok = ferrite_converter::hf_tokenizer::read(&dir)
            .unwrap_or_else(|e| panic!("converter: {e}"))
            .expect("the fixture has a tokenizer.json");
        let bytes = hf_tok.builder.to_bytes().expect("section");
        let vocab_size = hf_tok.builder.tokens.len() as u32;
        let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("HF tokenizer");
        let mut hf_specials_as_text = hf.clone();
        hf_specials_as_text.set_encode_special_tokens(true);
        Fixture { section: AlignedBytes::new(&bytes), vocab_size, hf, hf_specials_as_text }
    }

    fn tokenizer(&self) -> Tokenizer<'_> {
        let view = TokenizerView::parse(&self.section, self.vocab_size).expect("valid section");
        Tokenizer::new(view).expect("supported tokenizer")
    }
}

fn hf_encode(hf: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    hf.encode(text, false).expect("HF encode").get_ids().to_vec()
}

fn encode(t: &Tokenizer<'_>, text: &str) -> Result<Vec<u32>, TokenizerError> {
    let mut out = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = t.encode(text, &mut out)?;
    out.truncate(n);
    Ok(out)
}

fn encode_ordinary(t: &Tokenizer<'_>, text: &str) -> Result<Vec<u32>, TokenizerError> {
    let mut out = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = t.encode_ordinary(text, &mut out)?;
    out.truncate(n);
    Ok(out)
}

fn decode(t: &Tokenizer<'_>, ids: &[u32], skip_special: bool) -> Result<Vec<u8>, TokenizerError> {
    let mut len = 0;
    for &id in ids {
        len += t.token_bytes(id)?.len();
    }
    let mut out = vec![0u8; len];
    let n = if skip_special { t.decode_skip_special(ids, &mut out)? } else { t.decode(ids, &mut out)? };
    out.truncate(n);
    Ok(out)
}

/// Text printed token by token through [`Utf8Stream`].
fn streamed(t: &Tokenizer<'_>, ids: &[u32]) -> String {
    let mut text = String::new();
    let mut stream = Utf8Stream::new();
    for &id in ids {
        stream.push(t.token_bytes(id).expect("id in range"), |s| text.push_str(s));
    }
    stream.finish(|s| text.push_str(s));
    text
}

/// Mismatches, printed together at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn ids(&mut self, what: &str, text: &str, ours: &Result<Vec<u32>, TokenizerError>, hf: &[u32]) {
        if ours.as_deref() != Ok(hf) {
            self.0.push(format!("{what} of {text:?}\n  ferrite: {ours:?}\n  hf:      {hf:?}"));
        }
    }
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }
    fn assert_none(self, cases: usize) {
        if !self.0.is_empty() {
            for f in self.0.iter().take(40) {
                eprintln!("{f}\n");
            }
            panic!("{} mismatches over {cases} cases (first 40 printed above)", self.0.len());
        }
    }
}

/// SplitMix64 (ferrite-test-support): small, seeded, deterministic.
type Rng = SplitMix64;

const WORDS: &[&str] = &[
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "Once",
    "upon",
    "a",
    "time",
    "there",
    "was",
    "little",
    "girl",
    "named",
    "Emma",
    "tokenizer",
    "inference",
    "runtime",
    "edge",
    "model",
    "Hello",
    "World",
    "THE",
    "Internet",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "with",
    "for",
    "as",
    "on",
    "be",
    "at",
    "License",
    "Apache",
    "software",
    "distributed",
    "WITHOUT",
    "WARRANTIES",
    "antidisestablishmentarianism",
    "x",
    "I",
    "OK",
    "e.g",
    "etc",
    "vs",
    "HuggingFace",
    "SmolLM2",
    "GPT",
    "LLaMA",
    "qwen",
    "ferrite",
];

const ACCENTED: &[&str] = &[
    "café",
    "niño",
    "über",
    "façade",
    "crème",
    "brûlée",
    "jalapeño",
    "Ångström",
    "naïve",
    "Zürich",
    "São",
    "Paulo",
    "résumé",
    "señor",
    "Müller",
    "Ελληνικά",
    "Русский",
    "текст",
    "Đặng",
    "Œuvre",
    "ß",
    "İstanbul",
    "ǅemal",
    "e\u{301}",
    "n\u{303}o",
    "a\u{308}\u{304}",
    "Ñandú",
    "mañana",
    "über-Ärger",
    "ça",
    "l'été",
    "Ꭰ",
    "ﬁne",
];

const EMOJI: &[&str] = &[
    "😀",
    "👍",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "👩🏾‍💻",
    "🏳️‍🌈",
    "🇫🇷",
    "🇯🇵",
    "1️⃣",
    "#️⃣",
    "❤️",
    "🧑‍🤝‍🧑",
    "😂😂😂",
    "🤖",
    "🦀",
    "☺",
    "✌🏿",
    "🏴‍☠️",
    "👁‍🗨",
    "🫠",
    "\u{200d}",
    "\u{fe0f}",
];

const SNIPPETS: &[&str] = &[
    "fn main() {\n    println!(\"{}\", x);\n}\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 2; }",
    "def f(x):\n\treturn x**2  # square\n",
    "<div class=\"a\">&nbsp;</div>",
    "SELECT * FROM t WHERE id=42;",
    "x->y && !z || a::b<c>",
    "    \n\t\n  ",
    "#include <stdio.h>\r\n",
    "{\"key\": [1, 2.5, null], \"k2\": {\"a\": \"b\"}}",
    "if x != None and y >= 10:\n        pass\n",
    "let v: Vec<u8> = vec![0xff; 256];",
    "$ cargo test -p ferrite-runtime --release\n",
    "// TODO(me): fix it's bug\n",
    "/* comment */ int *p = &q[3];",
    "git commit -m 'it'\"'\"'s done'",
];

const WHITESPACE: &[&str] = &[
    " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", "\r", "\u{a0}", "\u{3000}", "\u{2028}", "\u{2029}", "\u{85}",
    "\u{b}", "\u{c}", "\u{200b}", "\u{1680}", "\u{2003}", "\u{202f}", "\u{180e}", "\u{feff}", "\u{1c}", "\u{1f}",
    " \t ", "\t\n", "\n ",
];

const NUMBERS: &[&str] = &[
    "0",
    "7",
    "42",
    "1234567890",
    "3.14159",
    "-17",
    "1,000,000",
    "2024-01-05",
    "0x1F",
    "1e-9",
    "½",
    "²",
    "³",
    "Ⅻ",
    "①",
    "٣٤٥",
    "१२३",
    "１２３",
    "𝟘𝟙",
    "10%",
    "$99.99",
    "4th",
    "v1.2.3",
    "+33 6 12 34 56 78",
    "00:00:59",
];

const CONTRACTION_SUFFIXES: &[&str] = &[
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "’s", "''", "'", "'x",
    "'sa", "'tis",
];

const CONTRACTIONS: &[&str] = &[
    "it's",
    "don't",
    "they're",
    "we've",
    "I'm",
    "you'll",
    "he'd",
    "IT'S",
    "DON'T",
    "'twas",
    "y'all",
    "rock'n'roll",
    "o'clock",
    "' s",
    "''s",
    "Bob's'",
    "'''",
];

const PUNCT: &str = "!@#$%^&*()-_=+[]{};:'\",.<>/?\\|`~…—–«»¿¡·•§¶†‡";

const SPECIALS: &[&str] = &[
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
];

const SPECIAL_PARTS: &[&str] =
    &["<|im_", "|>", "<|im_end", "<|", "<|endoftext|", "<|im_start|", "<", ">", "<file", "<<", ">>", "im_end"];

/// `1..=most` pieces (drawn first), each appended to the string by `piece`.
fn pieces(rng: &mut Rng, most: usize, mut piece: impl FnMut(&mut Rng, &mut String)) -> String {
    let mut s = String::new();
    for _ in 0..rng.range(1, most) {
        piece(rng, &mut s);
    }
    s
}

fn words(rng: &mut Rng, lo: usize, hi: usize) -> String {
    let mut s = String::new();
    for i in 0..rng.range(lo, hi) {
        if i > 0 {
            s.push(' ');
        }
        let w = rng.pick(WORDS);
        if rng.percent(10) {
            s.push_str(&w.to_uppercase());
        } else {
            s.push_str(w);
        }
    }
    s
}

fn prose(rng: &mut Rng) -> String {
    pieces(rng, 4, |rng, s| {
        s.push_str(&words(rng, 1, 12));
        s.push_str(rng.pick(&[".", ",", "!", "?", ";", ":", "", "...", " -", "\"", ")"]));
        s.push_str(rng.pick(&[" ", " ", "\n", "", "  ", "\n\n"]));
    })
}

fn accents(rng: &mut Rng) -> String {
    pieces(rng, 10, |rng, s| {
        s.push_str(if rng.percent(60) { rng.pick(ACCENTED) } else { rng.pick(WORDS) });
        s.push_str(rng.pick(&[" ", " ", ", ", "\n", "", "-"]));
    })
}

fn cjk(rng: &mut Rng) -> String {
    pieces(rng, 40, |rng, s| {
        let c = match rng.below(9) {
            0..=2 => rng.char_in(0x4e00, 0x9fff),
            3 => rng.char_in(0x3041, 0x3096),
            4 => rng.char_in(0x30a1, 0x30fa),
            5 => rng.char_in(0xac00, 0xd7a3),
            6 => rng.pick(&['。', '、', '！', '？', '「', '」', '\u{3000}', ' ', '・']),
            7 => rng.char_in(0xff10, 0xff19),
            _ => rng.char_in(0x20000, 0x2a6df),
        };
        s.push(c);
        if rng.percent(5) {
            s.push_str(rng.pick(WORDS));
        }
    })
}

fn emoji(rng: &mut Rng) -> String {
    pieces(rng, 8, |rng, s| {
        s.push_str(rng.pick(EMOJI));
        if rng.percent(50) {
            s.push_str(rng.pick(&[" ", "", "  ", "\n", " hi ", "!", "1", "a"]));
        }
    })
}

fn code(rng: &mut Rng) -> String {
    pieces(rng, 3, |rng, s| {
        s.push_str(rng.pick(SNIPPETS));
        if rng.percent(40) {
            s.push_str(&" ".repeat(rng.range(0, 12)));
            s.push_str(rng.pick(&["return 0;", "}", "x = y + 1", "\t# note", "end"]));
            s.push_str(rng.pick(&["\n", "\r\n", "", "  \n"]));
        }
    })
}

fn whitespace(rng: &mut Rng) -> String {
    pieces(rng, 10, |rng, s| {
        for _ in 0..rng.range(1, 4) {
            s.push_str(rng.pick(WHITESPACE));
        }
        if rng.percent(70) {
            s.push_str(if rng.percent(80) { rng.pick(WORDS) } else { rng.pick(&["1", "!", "é", "日", "'s"]) });
        }
    })
}

fn numbers(rng: &mut Rng) -> String {
    pieces(rng, 8, |rng, s| {
        if rng.percent(30) {
            let digits = rng.next_u64().to_string();
            s.push_str(&digits[..rng.range(1, 12).min(digits.len())]);
        } else {
            s.push_str(rng.pick(NUMBERS));
        }
        s.push_str(rng.pick(&[" ", "", " items", ", ", "\n", "x", "."]));
    })
}

fn contractions(rng: &mut Rng) -> String {
    pieces(rng, 8, |rng, s| {
        if rng.percent(50) {
            s.push_str(rng.pick(WORDS));
            s.push_str(rng.pick(CONTRACTION_SUFFIXES));
        } else {
            s.push_str(rng.pick(CONTRACTIONS));
        }
        s.push_str(rng.pick(&[" ", "", " '", "\n", ". ", " "]));
    })
}

fn punctuation(rng: &mut Rng) -> String {
    let punct: Vec<char> = PUNCT.chars().collect();
    pieces(rng, 8, |rng, s| {
        for _ in 0..rng.range(1, 8) {
            s.push(rng.pick(&punct));
        }
        s.push_str(rng.pick(&[" ", "", "a", " word", "1", "\n", "  "]));
    })
}

fn specials(rng: &mut Rng) -> String {
    pieces(rng, 8, |rng, s| {
        match rng.below(4) {
            0 | 1 => s.push_str(rng.pick(SPECIALS)),
            2 => s.push_str(rng.pick(SPECIAL_PARTS)),
            _ => {
                let kind = rng.below(10);
                s.push_str(&generate(rng, kind));
            }
        }
        if rng.percent(30) {
            s.push_str(rng.pick(&["user\n", "assistant\n", "\n", " ", "hi", "system\nYou are"]));
        }
    })
}

fn random_unicode(rng: &mut Rng) -> String {
    pieces(rng, 30, |rng, s| {
        let c = match rng.below(10) {
            0..=4 => rng.char_in(0, 0x10ffff),
            5..=7 => rng.char_in(0x80, 0xffff),
            _ => rng.char_in(0, 0x7f),
        };
        s.push(c);
    })
}

/// One string of the given kind (0..=11).
fn generate(rng: &mut Rng, kind: usize) -> String {
    match kind {
        0 => prose(rng),
        1 => accents(rng),
        2 => cjk(rng),
        3 => emoji(rng),
        4 => code(rng),
        5 => whitespace(rng),
        6 => numbers(rng),
        7 => contractions(rng),
        8 => punctuation(rng),
        9 => random_unicode(rng),
        10 => specials(rng),
        _ => {
            let mut s = String::new();
            for _ in 0..rng.range(2, 5) {
                let kind = rng.below(11);
                s.push_str(&generate(rng, kind));
            }
            s
        }
    }
}

fn fixed_cases() -> Vec<String> {
    let mut cases: Vec<String> = [
        "",
        " ",
        "  ",
        "\n",
        "a",
        "'s",
        "'",
        " '",
        "''",
        "   a",
        "a   ",
        "\t\ta",
        " \n b",
        "1",
        " 1",
        "a1b2",
        "Hello world",
        "Hello  world",
        "Hello\tworld\n",
        "<|im_start|>",
        "<|im_start|><|im_end|>",
        "<|im_start|<|im_end|>",
        "x<|endoftext|>y",
        "<|im_start|>user\nhi<|im_end|>",
        "<<|im_end|>>",
        "<|im_end|><|im_end|>\n",
        " <|im_start|> ",
        "<|im_start|>assistant\n",
        "I'M SURE IT'S FINE",
        "they'LL",
        "Once upon a time, there was a little girl named",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Long chunks: past the 64-token stack scratch and through every merge path.
    for (unit, times) in [("a", 200), (" ", 100), ("😀", 30), ("1", 50), ("!", 150), ("ab", 100), ("日本語", 40)] {
        cases.push(unit.repeat(times));
        cases.push(format!("{}x", unit.repeat(times)));
    }
    cases.push(format!("{}x", " ".repeat(100)));
    cases.push("antidisestablishmentarianism".repeat(5));
    cases
}

fn apache() -> String {
    std::fs::read_to_string(fixture_dir().join("apache-2.0.txt")).expect("apache-2.0.txt")
}

/// The fixed cases, 100 strings of each of the 12 kinds, and the Apache
/// license text.
fn all_cases() -> Vec<String> {
    let mut rng = Rng::new(0x5eed_f3a1_7e00_0001);
    let mut cases = fixed_cases();
    for kind in 0..12 {
        for _ in 0..100 {
            cases.push(generate(&mut rng, kind));
        }
    }
    cases.push(apache());
    cases
}

#[test]
fn golden_prompt_ids() {
    let fx = Fixture::load();
    let t = fx.tokenizer();
    let prompt0 = "Once upon a time, there was a little girl named";
    assert_eq!(encode(&t, prompt0).unwrap(), [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8180, 3365]);
    let prompt1 = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        encode(&t, prompt1).unwrap(),
        [
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182,
            2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198
        ]
    );
    // perplexity.json holds the ids of the whole Apache license text.
    let json = std::fs::read_to_string(fixture_dir().join("perplexity.json")).expect("perplexity.json");
    let start = json.find("\"token_ids\"").expect("token_ids key");
    let open = start + json[start..].find('[').expect("[");
    let close = open + json[open..].find(']').expect("]");
    let golden: Vec<u32> = json[open + 1..close].split(',').map(|s| s.trim().parse().expect("token id")).collect();
    assert_eq!(golden.len(), 2215);
    let ours = encode(&t, &apache()).unwrap();
    assert!(ours == golden, "apache-2.0.txt: ferrite {} ids, golden {} ids", ours.len(), golden.len());
}

#[test]
fn encode_and_decode_match_hf() {
    let fx = Fixture::load();
    let t = fx.tokenizer();
    let cases = all_cases();
    assert!(cases.len() >= 1000);
    let mut failures = Failures::default();
    let mut total_ids = 0;
    let mut lossy_cases = 0;
    for text in &cases {
        let hf = hf_encode(&fx.hf, text);
        total_ids += hf.len();
        let ours = encode(&t, text);
        failures.ids("encode", text, &ours, &hf);
        let Ok(ids) = ours else { continue };

        // Lossless, except that HF drops a byte that has no token (this
        // vocabulary, rebuilt from a GGUF, lacks 21 of the 256): the bytes
        // come back, whole or streamed token by token.
        let kept: Vec<u8> = text.bytes().filter(|&b| t.view().byte_token(b).is_some()).collect();
        if kept.len() != text.len() {
            lossy_cases += 1;
        }
        let kept_text = String::from_utf8_lossy(&kept).into_owned();
        let bytes = decode(&t, &ids, false);
        failures.check(bytes.as_deref() == Ok(&kept[..]), || {
            let got = bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
            format!("decode of {text:?}\n  ids:     {ids:?}\n  ferrite: {got:?}")
        });
        let stream = streamed(&t, &ids);
        failures
            .check(stream == kept_text, || format!("streamed decode of {text:?}\n  ids: {ids:?}\n  got: {stream:?}"));
        let hf_text = fx.hf.decode(&ids, false).expect("HF decode");
        failures.check(hf_text == kept_text, || format!("HF decode of {text:?} gave {hf_text:?}"));

        // Special tokens as text (HF `encode_special_tokens`).
        let hf_plain = hf_encode(&fx.hf_specials_as_text, text);
        failures.ids("encode_ordinary", text, &encode_ordinary(&t, text), &hf_plain);

        // Buffers: the exact count fits (always when the text is at most
        // 64 bytes, since each chunk then merges on the stack), one less
        // never does.
        let mut exact = vec![0u32; ids.len()];
        match t.encode(text, &mut exact) {
            Ok(n) => failures.check(exact[..n] == ids[..], || format!("exact-fit encode of {text:?} differs")),
            Err(e) => failures.check(text.len() > 64 && matches!(e, TokenizerError::BufferTooSmall { .. }), || {
                format!("exact-fit encode of {text:?} ({} ids) failed: {e:?}", ids.len())
            }),
        }
        if !ids.is_empty() {
            let mut short = vec![0u32; ids.len() - 1];
            let r = t.encode(text, &mut short);
            failures.check(matches!(r, Err(TokenizerError::BufferTooSmall { .. })), || {
                format!("encode of {text:?} into {} slots gave {r:?}", ids.len() - 1)
            });
            let mut short_bytes = vec![0u8; kept.len() - 1];
            let r = t.decode(&ids, &mut short_bytes);
            failures.check(matches!(r, Err(TokenizerError::BufferTooSmall { .. })), || {
                format!("decode of {text:?} into {} bytes gave {r:?}", kept.len() - 1)
            });
        }
    }
    eprintln!("{} strings, {total_ids} HF ids compared; {lossy_cases} strings hold bytes without a token", cases.len());
    failures.assert_none(cases.len());
}

#[test]
fn decode_random_ids_matches_hf() {
    let fx = Fixture::load();
    let t = fx.tokenizer();
    let n = fx.vocab_size as usize;
    let mut rng = Rng::new(0xdec0_de00_0000_0002);
    let mut failures = Failures::default();
    let runs = 500;
    for _ in 0..runs {
        let ids: Vec<u32> = (0..rng.range(0, 24))
            .map(|_| match rng.below(10) {
                0 => rng.below(17) as u32,          // added tokens
                1..=3 => rng.range(17, 300) as u32, // byte tokens and short pieces
                _ => rng.below(n) as u32,
            })
            .collect();
        for skip in [false, true] {
            let hf = fx.hf.decode(&ids, skip).expect("HF decode");
            let ours = decode(&t, &ids, skip).map(|b| String::from_utf8_lossy(&b).into_owned());
            failures.check(ours.as_deref() == Ok(hf.as_str()), || {
                format!("decode(skip_special={skip}) of {ids:?}\n  ferrite: {ours:?}\n  hf:      {hf:?}")
            });
        }
        let hf = fx.hf.decode(&ids, false).expect("HF decode");
        let stream = streamed(&t, &ids);
        failures
            .check(stream == hf, || format!("streamed decode of {ids:?}\n  ferrite: {stream:?}\n  hf:      {hf:?}"));
    }
    let bad = [fx.vocab_size, u32::MAX];
    let mut out = [0u8; 64];
    for id in bad {
        assert_eq!(t.decode(&[1, id], &mut out), Err(TokenizerError::BadToken { id, n_tokens: fx.vocab_size }));
        assert!(t.token_bytes(id).is_err());
    }
    failures.assert_none(runs);
}

/// Dense random text over the assigned planes (0 to 3) mixed with the
/// characters the regex treats specially, to catch any disagreement of the
/// Unicode tables (L, N, White_Space) with HF's.
#[test]
fn random_codepoints_match_hf() {
    let fx = Fixture::load();
    let t = fx.tokenizer();
    let mut rng = Rng::new(0xc0de_0000_0000_0003);
    let mut failures = Failures::default();
    let runs = 3000;
    for _ in 0..runs {
        let mut text = String::new();
        for _ in 0..rng.range(1, 24) {
            match rng.below(8) {
                0 => text.push(rng.pick(&[' ', ' ', '\'', '\n', '\t', '1', 's', '\u{a0}', '\u{3000}'])),
                1 => text.push(rng.char_in(0x10000, 0x3ffff)),
                _ => text.push(rng.char_in(0x80, 0xffff)),
            }
        }
        failures.ids("encode", &text, &encode(&t, &text), &hf_encode(&fx.hf, &text));
    }
    failures.assert_none(runs);
}
