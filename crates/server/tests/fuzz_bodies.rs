//! Fuzzing the request bodies: arbitrary JSON, near-valid completion and chat bodies with every
//! field given a plausible or an arbitrary value, and bytes that are not JSON at all, posted to a
//! real server (real axum, worker loop and scheduling core; the scripted backend of `common` as
//! the engine, so a case costs milliseconds). Every answer must be a 2xx or a 4xx with an
//! OpenAI-style error body; never a 5xx, a hang or a dead server. Bounded: `LAPSD_FUZZ_CASES`
//! cases per strategy (default 150), each request with a 30 s limit.

mod common;

use std::time::Duration;

use common::*;
use lapsd_core::PolicyKind;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

fn cases() -> u32 {
    std::env::var("LAPSD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Any JSON value, nested a few levels, with the numbers and strings that break parsers:
/// huge and negative numbers, floats, unicode, control characters, special-token text.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()].prop_map(|n| json!(n)),
        prop_oneof![
            any::<f64>().prop_filter("JSON has no NaN or infinity", |x| x.is_finite()),
            Just(-0.0),
            Just(1e308),
            Just(5e-324),
        ]
        .prop_map(|x| json!(x)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("<|im_end|>".to_string()),
            Just("<|im_start|>system\n".to_string()),
            Just("\u{0}\u{1f}\u{7f}".to_string()),
            Just("\u{feff}\u{202e}é漢字🦀".to_string()),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,12}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A plausible value for `field`, or anything.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let plausible: BoxedStrategy<Value> = match field {
        "model" => prop_oneof![Just(json!("scripted")), ".{0,12}".prop_map(Value::String)].boxed(),
        "prompt" => prop_oneof![
            ".{0,60}".prop_map(Value::String),
            prop::collection::vec(0u32..300, 0..40).prop_map(|ids| json!(ids)),
            prop::collection::vec(prop::collection::vec(0u32..300, 0..8), 0..3)
                .prop_map(|ids| json!(ids)),
            prop::collection::vec(".{0,10}", 0..3).prop_map(|s| json!(s)),
        ]
        .boxed(),
        "messages" => prop::collection::vec(
            (
                prop_oneof![
                    Just("system"),
                    Just("user"),
                    Just("assistant"),
                    Just("tool"),
                    Just("bogus")
                ],
                prop_oneof![
                    ".{0,40}".prop_map(Value::String),
                    Just(json!([{"type": "text", "text": "hi"}])),
                    Just(Value::Null),
                ],
            )
                .prop_map(|(role, content)| json!({"role": role, "content": content})),
            0..4,
        )
        .prop_map(Value::Array)
        .boxed(),
        "max_tokens" | "max_completion_tokens" | "min_tokens" => {
            prop_oneof![(-3i64..80).prop_map(|n| json!(n)), Just(json!(1u64 << 40))].boxed()
        }
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty"
        | "repetition_penalty" => prop_oneof![
            (-3.0f64..3.0).prop_map(|x| json!(x)),
            Just(json!(0)),
            Just(json!(1e300))
        ]
        .boxed(),
        "top_k" | "n" | "seed" | "priority" | "logprobs" | "top_logprobs" => prop_oneof![
            (-3i64..10).prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n))
        ]
        .boxed(),
        "stream" | "echo" | "ignore_eos" => any::<bool>().prop_map(Value::Bool).boxed(),
        "stream_options" => Just(json!({"include_usage": true})).boxed(),
        "stop" => prop_oneof![
            ".{0,6}".prop_map(Value::String),
            prop::collection::vec(".{0,4}", 0..6).prop_map(|s| json!(s)),
        ]
        .boxed(),
        "response_format" => prop_oneof![
            Just(json!({"type": "text"})),
            Just(json!({"type": "json_object"}))
        ]
        .boxed(),
        _ => any_json().boxed(),
    };
    prop_oneof![3 => plausible, 1 => any_json()].boxed()
}

const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "min_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "priority",
    "logprobs",
    "top_logprobs",
    "echo",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "suffix",
    "user",
    "unknown_field",
];

/// A valid body for each endpoint (a short prompt or conversation, a few tokens), then up to
/// four of the API's fields set to a plausible or an arbitrary value: most cases are one or two
/// fields away from a request that runs, so the fuzz reaches the scheduler and the streams too.
fn near_valid_bodies() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let edits = || {
        prop::collection::vec(
            prop::sample::select(FIELDS)
                .prop_flat_map(|f| field_value(f).prop_map(move |v| (f, v))),
            0..5,
        )
    };
    (
        ".{0,30}",
        0u32..40,
        any::<bool>(),
        edits(),
        edits(),
    )
        .prop_map(|(text, max_tokens, stream, completion_edits, chat_edits)| {
            let mut completion = json!({"model": "scripted", "prompt": text, "max_tokens": max_tokens, "stream": stream});
            let mut chat = json!({"model": "scripted", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "stream": stream});
            for (body, edits) in [(&mut completion, completion_edits), (&mut chat, chat_edits)] {
                for (field, value) in edits {
                    body[field] = value;
                }
            }
            vec![
                ("/v1/completions", completion.to_string()),
                ("/v1/chat/completions", chat.to_string()),
            ]
        })
}

/// The same body to both endpoints.
fn to_both(body: String) -> Vec<(&'static str, String)> {
    vec![
        ("/v1/completions", body.clone()),
        ("/v1/chat/completions", body),
    ]
}

/// Posts `body` and checks the answer's shape; `Err` describes what broke.
async fn check(
    server: &lapsd_server::ServerHandle,
    path: &str,
    body: String,
) -> Result<(), String> {
    let sent = body.chars().take(300).collect::<String>();
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        client()
            .post(url(server, path))
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .map_err(|_| format!("{path}: no answer within 30 s to {sent}"))?
    .map_err(|e| format!("{path}: request failed ({e}) for {sent}"))?;
    let status = response.status().as_u16();
    let streaming = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .map_err(|_| format!("{path}: body not finished within 30 s for {sent}"))?
        .map_err(|e| format!("{path}: body read failed ({e}) for {sent}"))?;
    if status >= 500 {
        return Err(format!("{path}: {status} {text} for {sent}"));
    }
    if (400..500).contains(&status) {
        let v: Value = serde_json::from_str(&text)
            .map_err(|_| format!("{path}: {status} without a JSON body ({text}) for {sent}"))?;
        let message = v["error"]["message"].as_str().unwrap_or_default();
        if message.is_empty() {
            return Err(format!(
                "{path}: {status} without error.message: {v} for {sent}"
            ));
        }
    } else if streaming {
        if !text.trim_end().ends_with("data: [DONE]") {
            return Err(format!("{path}: stream without [DONE]: {text} for {sent}"));
        }
    } else if serde_json::from_str::<Value>(&text).is_err() {
        return Err(format!(
            "{path}: {status} with a non-JSON body {text} for {sent}"
        ));
    }
    Ok(())
}

fn fuzz(strategy: impl Strategy<Value = Vec<(&'static str, String)>>, label: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(start(
        config(PolicyKind::Gittins),
        scripted_loader(Duration::from_millis(1)),
    ));
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |requests| {
        for (path, body) in requests {
            runtime
                .block_on(check(&server, path, body))
                .map_err(TestCaseError::fail)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{label}: {e}");
    }
    // The server is still healthy after everything it was sent.
    let (status, _) = runtime.block_on(get_text(&server, "/health"));
    assert_eq!(status, 200, "{label}: /health after fuzzing");
}

#[test]
fn arbitrary_json_bodies_never_get_a_5xx() {
    fuzz(
        any_json().prop_map(|v| to_both(v.to_string())),
        "arbitrary JSON",
    );
}

#[test]
fn near_valid_bodies_never_get_a_5xx() {
    fuzz(near_valid_bodies(), "near-valid bodies");
}

#[test]
fn bytes_that_are_not_json_get_a_4xx() {
    fuzz(
        prop_oneof![
            ".{0,80}",
            "\\{\"prompt\": \"[a-z]{0,10}".prop_map(String::from),
            "[\\[\\]{}\":,0-9a-z ]{0,60}".prop_map(String::from),
        ]
        .prop_map(to_both),
        "non-JSON bytes",
    );
}
