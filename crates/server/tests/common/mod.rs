//! Test harness shared by the integration tests: start a real server on 127.0.0.1:0 in-process,
//! with either the real embedded model or a scripted backend (deterministic text, no model: it
//! exercises the HTTP layer, the worker loop and the real scheduling core quickly), and small
//! HTTP/SSE helpers over reqwest. Every wait is bounded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapsd_core::{Capacity, PolicyConfig, PolicyKind};
use lapsd_engine::chat::ChatError;
use lapsd_server::backend::{
    Backend, EngineError, SamplingParams, SeqFinish, SeqStepOutput, TokenLogprob,
};
use lapsd_server::model_text::{ChatPromptError, ModelCard, ModelText};
use lapsd_server::{LoadedModel, ModelLoader, ServerConfig, ServerHandle};

pub const SCRIPT: &[u8] = b"The quick brown fox jumps over the lazy dog. ";
/// Token id the scripted model treats as end-of-sequence.
pub const SCRIPTED_EOS: u32 = 0;

pub fn config(policy: PolicyKind) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        policy,
        policy_config: PolicyConfig {
            max_wait_s: Some(30.0),
            ..PolicyConfig::default()
        },
        stability: lapsd_core::StabilityRule::default(),
        capacity: Capacity {
            max_batch: 8,
            max_step_tokens: 4096,
            kv_budget_tokens: 16384,
        },
        speculation_length: 4,
        speculation_mode: lapsd_core::SpeculationMode::Fixed,
        max_queue: 16,
        cost: lapsd_core::LinearCost::BUILT_IN,
        predictor_prior_tokens: 64,
        predictor_window: 64,
        max_tokens_bounds_prediction: true,
        shutdown_timeout_s: 10.0,
        step_log: None,
        length_model: None,
        http: lapsd_server::HttpConfig::default(),
    }
}

/// Byte-level text: token id = one UTF-8 byte (id 0 is EOS and never text).
pub struct ByteText;

impl ModelText for ByteText {
    fn encode(&self, text: &str, _add_special: bool) -> Result<Vec<u32>, EngineError> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        let bytes: Vec<u8> = ids.iter().filter(|&&i| i != 0).map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn render_chat(&self, messages: &[(String, String)]) -> Result<String, ChatError> {
        Ok(render_chatml(messages))
    }
    fn encode_chat(&self, messages: &[(String, String)]) -> Result<Vec<u32>, ChatPromptError> {
        // Byte-level text has no special tokens to protect.
        self.encode(&render_chatml(messages), false)
            .map_err(ChatPromptError::Tokenize)
    }
}

/// The ChatML fallback, as the engine renders it.
pub fn render_chatml(m: &[(String, String)]) -> String {
    lapsd_engine::chat::ChatTemplate::chatml()
        .render_turns(m)
        .expect("ChatML renders any turns")
}

struct ScriptedSeq {
    prompt: Vec<u32>,
    generated: u32,
    max_tokens: u32,
    kv_resident: bool,
    /// Emit EOS after this many tokens (prompts containing "EOS").
    eos_after: Option<u32>,
    /// Alternatives per token when logprobs were asked for.
    logprobs: Option<usize>,
}

/// A deterministic stand-in for the engine: output i is `SCRIPT[i % len]`; each step drafts k
/// tokens and accepts half of them (rounded down), so a step yields k/2 + 1 tokens; prompts that
/// contain `EOS` end with the EOS token after 5 tokens. `step_delay` makes steps take time.
pub struct ScriptedBackend {
    seqs: HashMap<u64, ScriptedSeq>,
    step_delay: Duration,
}

impl ScriptedBackend {
    pub fn new(step_delay: Duration) -> Self {
        Self {
            seqs: HashMap::new(),
            step_delay,
        }
    }
}

impl Backend for ScriptedBackend {
    fn add_sequence(
        &mut self,
        id: u64,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(), EngineError> {
        let eos_after = prompt_ids
            .windows(3)
            .any(|w| w == [69, 79, 83])
            .then_some(5);
        self.seqs.insert(
            id,
            ScriptedSeq {
                prompt: prompt_ids,
                generated: 0,
                max_tokens: params.max_tokens,
                kv_resident: false,
                eos_after,
                logprobs: params.logprobs,
            },
        );
        Ok(())
    }

    fn step(&mut self, batch: &[(u64, usize)]) -> Result<Vec<SeqStepOutput>, EngineError> {
        std::thread::sleep(self.step_delay);
        let mut out = Vec::new();
        for &(id, k) in batch {
            let seq = self
                .seqs
                .get_mut(&id)
                .ok_or(EngineError::UnknownSequence(id))?;
            let prefill = !seq.kv_resident;
            seq.kv_resident = true;
            let (drafted, accepted) = if prefill { (0, 0) } else { (k, k / 2) };
            let want = if prefill { 1 } else { accepted + 1 };
            let mut new_tokens = Vec::new();
            let mut finished = None;
            for _ in 0..want {
                if seq.generated >= seq.max_tokens {
                    break;
                }
                let tok = if seq.eos_after == Some(seq.generated) {
                    SCRIPTED_EOS
                } else {
                    u32::from(SCRIPT[seq.generated as usize % SCRIPT.len()])
                };
                seq.generated += 1;
                new_tokens.push(tok);
                if tok == SCRIPTED_EOS {
                    finished = Some(SeqFinish::Eos);
                    break;
                }
            }
            if finished.is_none() && seq.generated >= seq.max_tokens {
                finished = Some(SeqFinish::Length);
            }
            // Scripted log probabilities: token i gets -(i + 1) / 8, alternatives id + 1, id + 2...
            // each one nat less likely.
            let first = seq.generated as usize - new_tokens.len();
            let logprobs = match seq.logprobs {
                None => Vec::new(),
                Some(top) => new_tokens
                    .iter()
                    .enumerate()
                    .map(|(i, &token)| {
                        let logprob = -((first + i + 1) as f32) / 8.0;
                        TokenLogprob {
                            token,
                            logprob,
                            top: (0..top)
                                .map(|j| (token + j as u32, logprob - j as f32))
                                .collect(),
                        }
                    })
                    .collect(),
            };
            out.push(SeqStepOutput {
                id,
                new_tokens,
                drafted_tokens: drafted,
                accepted_tokens: accepted,
                finished,
                prefilled: prefill,
                // Prefills are whole here (the trait's default `step_members`).
                prefill_pending: false,
                logprobs,
            });
        }
        Ok(out)
    }

    fn free_kv(&mut self, id: u64) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.kv_resident = false;
        }
    }

    fn remove(&mut self, id: u64) {
        self.seqs.remove(&id);
    }

    fn kv_tokens_in_use(&self) -> u64 {
        self.seqs
            .values()
            .filter(|s| s.kv_resident)
            .map(|s| s.prompt.len() as u64 + u64::from(s.generated))
            .sum()
    }
}

/// The embedded model's GGUF: `$LAPSD_MODEL`, else models/ at the workspace root.
pub fn model_path() -> std::path::PathBuf {
    let path = std::env::var_os("LAPSD_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "model file {} is missing: run scripts/fetch-models.sh (or set LAPSD_MODEL)",
        path.display()
    );
    path
}

/// The text the scripted model produces for `n` tokens.
pub fn scripted_text(n: usize) -> String {
    (0..n).map(|i| SCRIPT[i % SCRIPT.len()] as char).collect()
}

pub fn scripted_loader(step_delay: Duration) -> ModelLoader {
    Box::new(move || {
        Ok(LoadedModel {
            backend: Box::new(ScriptedBackend::new(step_delay)),
            text: Arc::new(ByteText),
            card: ModelCard {
                name: "scripted".into(),
                context_length: 512,
                vocab_size: 256,
                eos_token_ids: vec![SCRIPTED_EOS],
            },
            draft_name: "scripted".into(),
        })
    })
}

pub async fn start(config: ServerConfig, loader: ModelLoader) -> ServerHandle {
    tokio::time::timeout(
        Duration::from_secs(120),
        lapsd_server::start(config, loader, std::future::pending()),
    )
    .await
    .expect("server starts within 120 s")
    .expect("server starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client")
}

pub fn url(server: &ServerHandle, path: &str) -> String {
    format!("http://{}{}", server.local_addr, path)
}

/// POSTs JSON; returns status and parsed body (JSON or `{"raw": text}`).
pub async fn post_json(
    server: &ServerHandle,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    post_raw(server, path, body.to_string()).await
}

pub async fn post_raw(server: &ServerHandle, path: &str, body: String) -> (u16, serde_json::Value) {
    let resp = client()
        .post(url(server, path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body read");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text }));
    (status, value)
}

/// POSTs a streaming request and returns every SSE `data:` payload, in order.
pub async fn post_sse(
    server: &ServerHandle,
    path: &str,
    body: &serde_json::Value,
) -> (u16, Vec<String>) {
    let resp = client()
        .post(url(server, path))
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body read");
    let data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect();
    (status, data)
}

pub async fn get_text(server: &ServerHandle, path: &str) -> (u16, String) {
    let resp = client()
        .get(url(server, path))
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body read"))
}

/// Value of a metric line `name{labels} value` (exact series match) in a /metrics body.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Polls /metrics until `series` satisfies `pred` (at most `tries` x 100 ms).
pub async fn wait_for_metric(
    server: &ServerHandle,
    series: &str,
    pred: impl Fn(f64) -> bool,
    tries: u32,
) -> f64 {
    let mut last = None;
    for _ in 0..tries {
        let (_, text) = get_text(server, "/metrics").await;
        last = metric(&text, series);
        if let Some(v) = last {
            if pred(v) {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("metric {series} never satisfied the condition (last {last:?})");
}

/// Concatenated text of completion stream chunks (`choices[0].text`) or chat deltas.
pub fn stream_text(data: &[String]) -> String {
    data.iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            let c = v["choices"].get(0)?.clone();
            c["text"]
                .as_str()
                .or_else(|| c["delta"]["content"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| serde_json::json!({"raw": self.body}))
    }
}

/// Opens a plain TCP connection to the server (for requests reqwest would not send: chosen
/// Host headers, slow or partial requests, several requests on one kept-alive connection).
pub async fn raw_connect(server: &ServerHandle) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(server.local_addr)
        .await
        .expect("connects")
}

/// Writes `request` (a whole HTTP/1.1 request) and reads one response with a Content-Length
/// body; at most 30 s.
pub async fn raw_exchange(stream: &mut tokio::net::TcpStream, request: &str) -> RawResponse {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    tokio::time::timeout(Duration::from_secs(30), read_response(stream))
        .await
        .expect("response within 30 s")
}

/// Reads one response (head, then a Content-Length body) from `stream`.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> RawResponse {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "connection closed before a full response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body[..length]).into_owned(),
    }
}

/// Reads (and discards) until the server closes the connection; panics if it is still open
/// after `limit`.
pub async fn expect_closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) {
    use tokio::io::AsyncReadExt;
    let closed = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, closed)
        .await
        .unwrap_or_else(|_| panic!("the server kept the connection open for {limit:?}"));
}

/// A GET request as raw HTTP/1.1 text with the given Host header and extra header lines.
pub fn raw_get(path: &str, host: &str, extra_headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}\r\n")
}

/// A POST request with a body as raw HTTP/1.1 text.
pub fn raw_post(path: &str, host: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}
