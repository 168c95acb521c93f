//! The tokenizer built from SmolLM2's GGUF metadata: known ids, round trips, streaming decode.
mod spec_common;

use lapsd_engine::{DecodeStream, Tokenizer};
use spec_common::model_path;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf_file(&model_path()).expect("tokenizer builds from GGUF metadata")
}

const TEXTS: [&str; 6] = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: 日本語のテキスト, emoji 🦀🚀, math ∑ x² ≤ ∞",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).collect();\n    println!(\"{v:?}\");\n}\n",
    "  leading spaces, trailing spaces   \n\n\nand blank lines",
    "numbers 1234567890 and 3.14159",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
];

#[test]
fn round_trips_text() {
    let tok = tokenizer();
    for text in TEXTS {
        let ids = tok.encode(text, true).unwrap();
        assert!(!ids.is_empty());
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}

#[test]
fn special_tokens_have_their_vocab_ids() {
    let tok = tokenizer();
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![1]);
    assert_eq!(tok.encode("<|im_end|>", false).unwrap(), vec![2]);
    assert_eq!(tok.encode("<|endoftext|>", false).unwrap(), vec![0]);
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_id("no such token"), None);
    assert_eq!(tok.vocab_size(), 49152);
    // SmolLM2 does not add a BOS token (tokenizer.ggml.add_bos_token = false).
    let a = tok.encode("Hi", true).unwrap();
    assert_eq!(a, tok.encode("Hi", false).unwrap());
}

#[test]
fn known_ids_of_the_chat_template_pieces() {
    let tok = tokenizer();
    // "\n" is byte-level "Ċ" (198 in the GPT-2-derived vocab); "user" and "assistant" are single
    // tokens; the ids are looked up by their vocabulary strings, not hard-coded guesses.
    let ids = tok
        .encode("<|im_start|>user\nHi<|im_end|>\n", false)
        .unwrap();
    let expect: Vec<u32> = ["<|im_start|>", "user", "Ċ", "Hi", "<|im_end|>", "Ċ"]
        .iter()
        .map(|t| tok.token_id(t).unwrap_or_else(|| panic!("{t} in vocab")))
        .collect();
    assert_eq!(ids, expect);
    assert_eq!(expect[2], 198);
}

#[test]
fn digits_are_split_one_by_one_like_smollm() {
    let tok = tokenizer();
    let ids = tok.encode("2024", false).unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    let word = tok.encode(" capital", false).unwrap();
    assert_eq!(word, vec![tok.token_id("Ġcapital").unwrap()]);
}

#[test]
fn decode_stream_yields_exactly_the_text_and_never_broken_utf8() {
    let tok = tokenizer();
    for text in TEXTS {
        let ids = tok.encode(text, false).unwrap();
        let mut stream = DecodeStream::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.push(&tok, id).unwrap();
            assert!(
                !piece.contains('\u{FFFD}'),
                "{text:?}: broken piece {piece:?}"
            );
            out.push_str(&piece);
        }
        assert_eq!(out, text);
        assert_eq!(stream.ids(), ids.as_slice());
    }
}
