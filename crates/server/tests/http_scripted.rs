//! HTTP tests against a real server (real axum, real worker loop, real scheduling core) whose
//! engine is the scripted backend of `common` (deterministic text, no model), so every API path
//! and error case is checked quickly. The same behaviours on the real model: `http_model.rs`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use lapsd_core::PolicyKind;
use serde_json::json;

fn fast() -> lapsd_server::ModelLoader {
    scripted_loader(Duration::from_millis(1))
}

#[tokio::test]
async fn completion_non_stream_and_stream_agree() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let body = json!({"model": "scripted", "prompt": "Hello", "max_tokens": 12, "temperature": 0});
    let (status, v) = post_json(&server, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], scripted_text(12));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], 17);
    let sd = &v["metrics"]["speculative_decoding"];
    // Prefill gives 1 token; steps with k = 4 give k/2 + 1 = 3 tokens (-> 4, 7, 10); the core
    // caps k at the remaining tokens - 1: k = 1 gives 1 (accepted 0) -> 11, k = 0 gives 1 -> 12.
    // SD steps with a draft: 4; drafted 4 + 4 + 4 + 1; accepted 2 + 2 + 2 + 0.
    assert_eq!(sd["verify_steps"], 4);
    assert_eq!(sd["drafted_tokens"], 13);
    assert_eq!(sd["accepted_tokens"], 6);
    // serde_json's default float parsing may differ from the sent value in the last bit.
    let rate = sd["acceptance_rate"].as_f64().expect("a rate");
    assert!((rate - 6.0 / 13.0).abs() < 1e-12, "{rate}");
    assert_eq!(sd["accepted_per_position"], json!([3, 3, 0, 0]));
    let sched = &v["metrics"]["scheduling"];
    assert_eq!(sched["policy"], "gittins");
    assert_eq!(sched["preemptions"], 0);
    assert!(sched["ttft_s"].as_f64().is_some(), "{sched}");

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let (status, data) = post_sse(&server, "/v1/completions", &stream_body).await;
    assert_eq!(status, 200);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stream_text(&data), scripted_text(12));
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk is JSON"))
        .collect();
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 12);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(finish["metrics"]["speculative_decoding"]["verify_steps"], 4);
    server.shutdown().await.expect("clean shutdown");
}

/// `logprobs` in both APIs' shapes, one entry per generated token, streamed or not: the scripted
/// engine gives token i the log probability -(i + 1) / 8 and alternatives one nat apart.
#[tokio::test]
async fn logprobs_have_one_entry_per_token_in_openai_shapes() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let body = json!({"prompt": "Hello", "max_tokens": 12, "temperature": 0, "logprobs": 2});
    let (status, v) = post_json(&server, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("a token string"))
        .collect();
    assert_eq!(tokens.concat(), scripted_text(12));
    let want: Vec<f64> = (1..=12).map(|i| -(i as f64) / 8.0).collect();
    let got: Vec<f64> = lp["token_logprobs"]
        .as_array()
        .expect("token_logprobs")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect();
    assert_eq!(got, want);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .expect("text_offset")
        .iter()
        .map(|x| x.as_u64().expect("an offset"))
        .collect();
    assert_eq!(offsets, (0..12).collect::<Vec<u64>>());
    // Token "T" (84): itself at -1/8, then "U" (85) at -9/8.
    assert_eq!(lp["top_logprobs"][0], json!({"T": -0.125, "U": -1.125}));
    // Streamed: the same entries, spread over the chunks.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let (status, data) = post_sse(&server, "/v1/completions", &sb).await;
    assert_eq!(status, 200);
    let mut streamed = Vec::new();
    let mut streamed_offsets = Vec::new();
    for d in &data[..data.len() - 1] {
        let chunk: serde_json::Value = serde_json::from_str(d).expect("JSON chunk");
        let Some(lp) = chunk["choices"][0]["logprobs"].as_object() else {
            continue;
        };
        for x in lp["token_logprobs"].as_array().expect("token_logprobs") {
            streamed.push(x.as_f64().expect("a number"));
        }
        for x in lp["text_offset"].as_array().expect("text_offset") {
            streamed_offsets.push(x.as_u64().expect("an offset"));
        }
    }
    assert_eq!(streamed, want);
    assert_eq!(streamed_offsets, offsets);
    // Chat: `logprobs: true` with `top_logprobs`.
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        "temperature": 0, "logprobs": true, "top_logprobs": 1});
    let (status, v) = post_json(&server, "/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(content.len(), 4);
    assert_eq!(
        content[0],
        json!({"token": "T", "logprob": -0.125, "bytes": [84],
            "top_logprobs": [{"token": "T", "logprob": -0.125, "bytes": [84]}]})
    );
    // Without logprobs the field is null.
    let (_, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 2}),
    )
    .await;
    assert!(v["choices"][0]["logprobs"].is_null(), "{v}");
    server.shutdown().await.expect("clean shutdown");
}

/// `n` choices, each its own sequence: all in the response (the scripted engine writes the same
/// text for each), usage counting the prompt once; streamed chunks carry their choice's index and
/// `[DONE]` comes once, after every choice's finish chunk and the summed usage. `echo` puts the
/// prompt first. More choices than free admission slots: 429.
#[tokio::test]
async fn n_choices_and_echo() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let body = json!({"prompt": "Hello", "max_tokens": 6, "n": 3, "seed": 1});
    let (status, v) = post_json(&server, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], scripted_text(6));
        assert_eq!(c["finish_reason"], "length");
    }
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 18);
    assert_eq!(v["usage"]["total_tokens"], 23);

    let mut sb = body.clone();
    sb["n"] = json!(2);
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let (status, data) = post_sse(&server, "/v1/completions", &sb).await;
    assert_eq!(status, 200);
    assert_eq!(data.iter().filter(|d| d.as_str() == "[DONE]").count(), 1);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("JSON chunk"))
        .collect();
    let mut texts = [String::new(), String::new()];
    let mut finishes = 0;
    for c in &chunks {
        if let Some(choice) = c["choices"].get(0) {
            let i = choice["index"].as_u64().expect("index") as usize;
            texts[i].push_str(choice["text"].as_str().expect("text"));
            finishes += usize::from(choice["finish_reason"] == "length");
        }
    }
    assert_eq!(texts, [scripted_text(6), scripted_text(6)]);
    assert_eq!(finishes, 2);
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 12);

    // Chat with n = 2.
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "n": 2});
    let (status, v) = post_json(&server, "/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][1]["index"], 1);
    assert_eq!(v["choices"][1]["message"]["content"], scripted_text(3));

    // echo: the prompt, then the completion; streamed, the prompt comes first.
    let echo = json!({"prompt": "Hello", "max_tokens": 4, "echo": true});
    let (status, v) = post_json(&server, "/v1/completions", &echo).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["text"],
        format!("Hello{}", scripted_text(4))
    );
    let mut se = echo.clone();
    se["stream"] = json!(true);
    let (_, data) = post_sse(&server, "/v1/completions", &se).await;
    let first: serde_json::Value = serde_json::from_str(&data[0]).expect("JSON chunk");
    assert_eq!(first["choices"][0]["text"], "Hello");
    assert_eq!(stream_text(&data), format!("Hello{}", scripted_text(4)));
    server.shutdown().await.expect("clean shutdown");

    // More choices than admission slots.
    let mut cfg = config(PolicyKind::Gittins);
    cfg.max_queue = 2;
    let server = start(cfg, fast()).await;
    let (status, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 2, "n": 3}),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    let (status, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 2, "n": 2}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn chat_completion_and_chat_stream() {
    let server = start(config(PolicyKind::Fcfs), fast()).await;
    let body = json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_completion_tokens": 7});
    let (status, v) = post_json(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], scripted_text(7));
    let prompt = render_chatml_len(&[("system", "Be brief."), ("user", "Hi")]);
    assert_eq!(v["usage"]["prompt_tokens"], prompt);

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let (status, data) = post_sse(&server, "/v1/chat/completions", &sb).await;
    assert_eq!(status, 200);
    let first: serde_json::Value = serde_json::from_str(&data[0]).expect("JSON chunk");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(stream_text(&data), scripted_text(7));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    server.shutdown().await.expect("clean shutdown");
}

fn render_chatml_len(turns: &[(&str, &str)]) -> usize {
    let t: Vec<(String, String)> = turns
        .iter()
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect();
    common::render_chatml(&t).len()
}

#[tokio::test]
async fn eos_and_stop_strings_end_with_stop() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let (s, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"prompt": "say EOS", "max_tokens": 50}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], scripted_text(5));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The script is "The quick brown fox ..."; stop at "brown" keeps "The quick ".
    let body = json!({"prompt": "x", "max_tokens": 40, "stop": ["brown", "zzz"]});
    let (s, v) = post_json(&server, "/v1/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "The quick ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let (_, data) = post_sse(&server, "/v1/completions", &sb).await;
    assert_eq!(stream_text(&data), "The quick ");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn models_health_metrics_and_unknown_route() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let (s, text) = get_text(&server, "/v1/models").await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "scripted");
    assert_eq!(v["data"][0]["max_model_len"], 512);
    let (s, text) = get_text(&server, "/health").await;
    assert_eq!((s, text.as_str()), (200, r#"{"status":"ok"}"#));
    let (s, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"prompt": "hi", "max_tokens": 9}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, text) = get_text(&server, "/metrics").await;
    assert_eq!(s, 200);
    assert_eq!(
        metric(
            &text,
            "lapsd_requests_finished_total{finish_reason=\"length\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "lapsd_generation_tokens_total"), Some(9.0));
    assert_eq!(metric(&text, "lapsd_prompt_tokens_total"), Some(2.0));
    // 9 tokens = prefill 1, k = 4 steps of 3 (-> 4, 7), k = 1 (accepts 0) -> 8, k = 0 -> 9:
    // drafts of 4, 4 and 1 tokens, accepting 2, 2 and 0.
    assert_eq!(
        metric(&text, "lapsd_spec_decode_num_drafts_total"),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "lapsd_spec_decode_num_draft_tokens_total"),
        Some(9.0)
    );
    assert_eq!(
        metric(&text, "lapsd_spec_decode_num_accepted_tokens_total"),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &text,
            "lapsd_spec_decode_num_accepted_tokens_per_pos_total{position=\"1\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "lapsd_spec_decode_num_accepted_tokens_per_pos_total{position=\"2\"}"
        ),
        None
    );
    assert_eq!(
        metric(&text, "lapsd_time_to_first_token_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "lapsd_requests{state=\"running\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&text, "lapsd_kv_tokens_in_use"), Some(0.0));
    assert!(
        text.contains("lapsd_policy_info{draft=\"scripted\",policy=\"gittins\"} 1"),
        "{text}"
    );
    let (s, v) = post_json(&server, "/v2/nothing", &json!({})).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "not_found");
    server.shutdown().await.expect("clean shutdown");
}

/// Each bad input -> exact status and the OpenAI error body naming the field.
#[tokio::test]
async fn bad_inputs_get_openai_errors() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("/v1/completions", "{\"prompt\": ".into(), 400, None),
        ("/v1/completions", "not json".into(), 400, None),
        (
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": "ten"}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"max_tokens": 3}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "model": "gpt-4"}).to_string(),
            404,
            Some("model"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": 0}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": -1}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": 512}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(600)}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": ""}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "n": 17}).to_string(),
            400,
            Some("n"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "temperature": 3}).to_string(),
            400,
            Some("temperature"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "top_p": 0}).to_string(),
            400,
            Some("top_p"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "stop": ["a","b","c","d","e"]}).to_string(),
            400,
            Some("stop"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}).to_string(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(),
            400,
            Some("messages[0].role"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": "hi"}).to_string(),
            400,
            Some("messages"),
        ),
    ];
    for (path, body, status, param) in cases {
        let (s, v) = post_raw(&server, path, body.clone()).await;
        assert_eq!(s, status, "{path} {body} -> {v}");
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body} -> {v}"
        );
        assert!(err["type"].as_str().is_some(), "{body} -> {v}");
        assert_eq!(err["param"].as_str(), param, "{body} -> {v}");
    }
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn full_queue_answers_429() {
    let mut cfg = config(PolicyKind::Gittins);
    cfg.max_queue = 1;
    let server = start(cfg, scripted_loader(Duration::from_millis(20))).await;
    // Hold the only slot with a long streaming request; wait for its first chunk.
    let resp = client()
        .post(url(&server, "/v1/completions"))
        .json(&json!({"prompt": "hi", "max_tokens": 200, "stream": true}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("first chunk in time");
    assert!(first.is_some());
    let (s, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    drop(body); // client goes away: the slot is freed
    wait_for_metric(
        &server,
        "lapsd_requests_finished_total{finish_reason=\"cancelled\"}",
        |v| v == 1.0,
        100,
    )
    .await;
    let (s, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, text) = get_text(&server, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "lapsd_requests_rejected_total{reason=\"queue_full\"}"
        ),
        Some(1.0)
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn disconnect_mid_stream_cancels_and_frees_kv() {
    let server = start(
        config(PolicyKind::Gittins),
        scripted_loader(Duration::from_millis(10)),
    )
    .await;
    let resp = client()
        .post(url(&server, "/v1/completions"))
        .json(&json!({"prompt": "hello there", "max_tokens": 400, "stream": true}))
        .send()
        .await
        .expect("sent");
    let mut body = resp.bytes_stream();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("chunk in time");
    }
    let kv = wait_for_metric(&server, "lapsd_kv_tokens_in_use", |v| v > 0.0, 100).await;
    assert!(kv > 0.0);
    drop(body);
    wait_for_metric(
        &server,
        "lapsd_requests_finished_total{finish_reason=\"cancelled\"}",
        |v| v == 1.0,
        100,
    )
    .await;
    wait_for_metric(&server, "lapsd_kv_tokens_in_use", |v| v == 0.0, 100).await;
    wait_for_metric(&server, "lapsd_kv_tokens_reserved", |v| v == 0.0, 100).await;
    let (_, text) = get_text(&server, "/metrics").await;
    assert_eq!(
        metric(&text, "lapsd_requests{state=\"running\"}"),
        Some(0.0)
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    let server = start(
        config(PolicyKind::Gittins),
        scripted_loader(Duration::from_millis(10)),
    )
    .await;
    let addr = server.local_addr;
    let inflight = tokio::spawn(async move {
        let resp = client()
            .post(format!("http://{addr}/v1/completions"))
            .json(&json!({"prompt": "hi", "max_tokens": 60}))
            .send()
            .await
            .expect("sent");
        let status = resp.status().as_u16();
        (
            status,
            resp.json::<serde_json::Value>().await.expect("JSON"),
        )
    });
    wait_for_metric(
        &server,
        "lapsd_requests{state=\"running\"}",
        |v| v == 1.0,
        100,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), server.shutdown())
        .await
        .expect("shutdown in time")
        .expect("clean shutdown");
    let (status, v) = inflight.await.expect("task");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], scripted_text(60));
    let refused = client().get(format!("http://{addr}/health")).send().await;
    assert!(refused.is_err(), "the listener is closed after shutdown");
}

#[tokio::test]
async fn shutdown_timeout_cancels_what_is_left() {
    let mut cfg = config(PolicyKind::Gittins);
    cfg.shutdown_timeout_s = 0.2;
    let server = start(cfg, scripted_loader(Duration::from_millis(20))).await;
    let addr = server.local_addr;
    let inflight = tokio::spawn(async move {
        let resp = client()
            .post(format!("http://{addr}/v1/completions"))
            .json(&json!({"prompt": "hi", "max_tokens": 500}))
            .send()
            .await
            .expect("sent");
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.expect("JSON"),
        )
    });
    wait_for_metric(
        &server,
        "lapsd_requests{state=\"running\"}",
        |v| v == 1.0,
        100,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), server.shutdown())
        .await
        .expect("shutdown in time")
        .expect("clean shutdown");
    let (status, v) = inflight.await.expect("task");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "shutting_down");
}

/// Concurrent requests under every server policy (and the settings that change an ordering) all
/// complete with the text they get alone.
#[tokio::test]
async fn concurrent_requests_complete_under_every_policy() {
    for text in [
        "gittins",
        "gittins[batch-formation=marginal]",
        "laps-sd",
        "laps-sd[max-wait-s=0]",
        "laps-sd[tokens-per-step=mean-accepted-length]",
        "laps-sd[las-phase=false]",
        "laps-sd[las-phase=false,batch-formation=marginal]",
        "fcfs",
        "sjf",
        "srpt",
        "las",
        "mlfq",
        "trail",
    ] {
        let base = config(lapsd_core::PolicyKind::Fcfs).policy_config;
        let spec = lapsd_core::PolicySpec::parse(text, &base).expect("policy");
        let policy = spec.kind.name();
        let mut cfg = config(spec.kind);
        cfg.policy_config = spec.config;
        cfg.capacity.max_batch = 3;
        let server = start(cfg, fast()).await;
        let mut tasks = Vec::new();
        for i in 0..8u32 {
            let addr = server.local_addr;
            let n = 5 + 7 * i;
            tasks.push(tokio::spawn(async move {
                let v: serde_json::Value = client()
                    .post(format!("http://{addr}/v1/completions"))
                    .json(&json!({"prompt": format!("request {i}"), "max_tokens": n, "priority": i % 2}))
                    .send()
                    .await
                    .expect("sent")
                    .json()
                    .await
                    .expect("JSON");
                (n, v)
            }));
        }
        for t in tasks {
            let (n, v) = t.await.expect("task");
            assert_eq!(
                v["choices"][0]["text"],
                scripted_text(n as usize),
                "{policy}: {v}"
            );
            assert_eq!(v["metrics"]["scheduling"]["policy"], policy);
        }
        server.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test]
async fn oracle_is_refused_at_start() {
    let err = lapsd_server::start(config(PolicyKind::Oracle), fast(), std::future::pending())
        .await
        .err()
        .expect("oracle refused");
    assert!(err.to_string().contains("oracle"), "{err}");
}

/// `--step-log`: one line per engine step, in the cost model's terms (the scripted engine's
/// steps are known exactly: see `completion_non_stream_and_stream_agree`).
#[tokio::test]
async fn step_log_records_every_step() {
    let path = std::env::temp_dir().join(format!("lapsd-step-log-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut cfg = config(PolicyKind::Fcfs);
    cfg.step_log = Some(path.clone());
    let server = start(cfg, fast()).await;
    let body = json!({"model": "scripted", "prompt": "Hello", "max_tokens": 12, "temperature": 0});
    let (status, v) = post_json(&server, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    server.shutdown().await.expect("clean shutdown");
    let text = std::fs::read_to_string(&path).expect("step log written");
    let _ = std::fs::remove_file(&path);
    let steps: Vec<lapsd_core::StepObservation> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a StepObservation per line"))
        .collect();
    let shape: Vec<(u32, u32, u32, u32, u32)> = steps
        .iter()
        .map(|s| {
            (
                s.prefills,
                s.prefill_tokens,
                s.decode_members,
                s.verified_tokens,
                s.draft_passes,
            )
        })
        .collect();
    // Prefill of the 5 prompt tokens, three k = 4 steps, then k = 1 and k = 0.
    assert_eq!(
        shape,
        vec![
            (1, 5, 0, 0, 0),
            (0, 0, 1, 5, 4),
            (0, 0, 1, 5, 4),
            (0, 0, 1, 5, 4),
            (0, 0, 1, 2, 1),
            (0, 0, 1, 1, 0),
        ]
    );
    assert!(steps.iter().all(|s| s.duration_s >= 0.0));
    assert!(steps.windows(2).all(|w| w[0].t_s <= w[1].t_s));
}

#[tokio::test]
async fn unwritable_step_log_fails_the_start() {
    let mut cfg = config(PolicyKind::Fcfs);
    cfg.step_log = Some(std::path::PathBuf::from("/nonexistent-dir/steps.jsonl"));
    let err = lapsd_server::start(cfg, fast(), std::future::pending())
        .await
        .err()
        .expect("start refused");
    assert!(err.to_string().contains("--step-log"), "{err}");
}

#[tokio::test]
async fn metrics_compat_vllm_adds_vllms_load_gauges() {
    let plain = start(config(PolicyKind::Gittins), fast()).await;
    let (status, text) = get_text(&plain, "/metrics").await;
    assert_eq!(status, 200);
    assert!(!text.contains("vllm:"), "off by default: {text}");
    let mut c = config(PolicyKind::Gittins);
    c.http.metrics_compat_vllm = true;
    let server = start(c, fast()).await;
    let body = json!({"model": "scripted", "prompt": "Hello", "max_tokens": 4});
    let (status, _) = post_json(&server, "/v1/completions", &body).await;
    assert_eq!(status, 200);
    let (status, text) = get_text(&server, "/metrics").await;
    assert_eq!(status, 200);
    for (name, value) in [
        ("vllm:num_requests_waiting", 0.0),
        ("vllm:num_requests_running", 0.0),
        ("vllm:kv_cache_usage_perc", 0.0),
    ] {
        let series = format!("{name}{{model_name=\"scripted\"}}");
        assert_eq!(metric(&text, &series), Some(value), "{series} in {text}");
    }
}
