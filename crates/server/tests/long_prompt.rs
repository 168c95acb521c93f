//! A long prompt no longer freezes the server (the embedded SmolLM2-135M-Instruct model, real
//! HTTP on loopback): it is prefilled in chunks of `--max-step-tokens`, a short request sent
//! meanwhile is answered in a small multiple of its latency on an idle server, and dropping the
//! long request's connection frees its KV before its prefill would have ended. Needs the model
//! (scripts/fetch-models.sh, or LAPSD_MODEL).

mod common;

use std::time::Instant;

use common::*;
use lapsd_core::PolicyKind;
use lapsd_engine::Tokenizer;
use lapsd_server::sd_backend::{loader, LoadSpec};
use serde_json::json;

/// Tokens of the long prompt: under SmolLM2's 8,192-token context with room for the reply.
const LONG_PROMPT_TOKENS: usize = 7000;
/// A step budget sized for a 2-core CPU: a step of this many prompt tokens takes about a second
/// a few thousand tokens into the prompt, which bounds how long a new request waits for the
/// step under way.
const STEP_TOKENS: u64 = 64;

fn long_prompt_ids() -> Vec<u32> {
    let tokenizer = Tokenizer::from_gguf_file(&model_path()).expect("tokenizer");
    let text = "The history of the printing press begins in the fifteenth century, when movable \
                type changed how books were made, sold and read across Europe. ";
    let ids = tokenizer
        .encode(&text.repeat(LONG_PROMPT_TOKENS / 20 + 1), false)
        .expect("encodes");
    ids[..LONG_PROMPT_TOKENS].to_vec()
}

/// Seconds a short greedy completion takes end to end, and its `metrics.scheduling`.
async fn short_request(server: &lapsd_server::ServerHandle) -> (f64, serde_json::Value) {
    let started = Instant::now();
    let (status, body) = post_json(
        server,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 24, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (
        started.elapsed().as_secs_f64(),
        body["metrics"]["scheduling"].clone(),
    )
}

async fn metric_now(server: &lapsd_server::ServerHandle, series: &str) -> f64 {
    let (_, text) = get_text(server, "/metrics").await;
    metric(&text, series).unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_is_prefilled_in_chunks_and_neither_blocks_nor_outlives_its_client() {
    let mut config = config(PolicyKind::Gittins);
    config.capacity.max_step_tokens = STEP_TOKENS;
    let server = start(
        config,
        loader(LoadSpec {
            model_path: model_path(),
            draft: "ngram".parse().expect("draft spec"),
            weights: lapsd_engine::WeightMode::Fast,
            served_model_name: Some("smollm2".into()),
        }),
    )
    .await;

    // Solo latency of the short request on the idle server (after one warm-up run).
    short_request(&server).await;
    let mut solo = Vec::new();
    for _ in 0..3 {
        let (latency_s, scheduling) = short_request(&server).await;
        // Queue time ends when its first step starts; TTFT also counts that step.
        let queue_s = scheduling["queue_time_s"].as_f64().expect("queue time");
        let ttft_s = scheduling["ttft_s"].as_f64().expect("ttft");
        assert!(queue_s < ttft_s, "{scheduling}");
        solo.push(latency_s);
    }
    solo.sort_by(f64::total_cmp);
    let solo_s = solo[1];

    // The long prompt, streamed so that dropping the task drops the connection.
    let prompt = long_prompt_ids();
    let long_url = url(&server, "/v1/completions");
    let long = tokio::spawn(async move {
        let resp = client()
            .post(long_url)
            .json(&json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": true}))
            .send()
            .await
            .expect("sent");
        resp.bytes().await
    });
    // Its prefill is under way once its first chunks hold KV; the gauges say it runs.
    let first_kv = wait_for_metric(&server, "lapsd_kv_tokens_in_use", |v| v >= 1.0, 600).await;
    let first_kv_at = Instant::now();
    wait_for_metric(
        &server,
        "lapsd_requests{state=\"running\"}",
        |v| v == 1.0,
        100,
    )
    .await;
    let usage = metric_now(&server, "lapsd_kv_cache_usage_ratio").await;
    assert!(usage > 0.0 && usage < 1.0, "usage ratio {usage}");

    let (during_s, scheduling) = short_request(&server).await;
    let ratio = during_s / solo_s;
    eprintln!(
        "short request: solo {solo_s:.3} s, during the long prefill {during_s:.3} s \
         (ratio {ratio:.2}); scheduling {scheduling}"
    );
    assert!(
        ratio < 5.0,
        "the short request took {ratio:.1}x its solo latency ({during_s:.2} s vs {solo_s:.2} s)"
    );

    // Still prefilling: less KV than the prompt, and growing.
    let kv_at_drop = metric_now(&server, "lapsd_kv_tokens_in_use").await;
    let dropped_at = Instant::now();
    assert!(
        kv_at_drop > first_kv && kv_at_drop < LONG_PROMPT_TOKENS as f64,
        "long prompt KV {kv_at_drop} (first seen {first_kv})"
    );
    long.abort();
    let _ = long.await;
    wait_for_metric(
        &server,
        "lapsd_requests_finished_total{finish_reason=\"cancelled\"}",
        |v| v == 1.0,
        600,
    )
    .await;
    wait_for_metric(&server, "lapsd_kv_tokens_in_use", |v| v == 0.0, 600).await;
    let freed_after_s = dropped_at.elapsed().as_secs_f64();
    assert_eq!(metric_now(&server, "lapsd_kv_cache_usage_ratio").await, 0.0);
    // The rest of the prefill at the rate it was going would have taken longer than that.
    let rate_tokens_per_s = (kv_at_drop - first_kv) / (dropped_at - first_kv_at).as_secs_f64();
    let rest_s = (LONG_PROMPT_TOKENS as f64 - kv_at_drop) / rate_tokens_per_s;
    eprintln!("KV freed {freed_after_s:.3} s after the drop; the prefill had {rest_s:.1} s left");
    assert!(
        freed_after_s < rest_s,
        "KV freed after {freed_after_s:.2} s, the prefill would have ended in {rest_s:.2} s"
    );
    assert_eq!(
        metric_now(&server, "lapsd_requests{state=\"running\"}").await
            + metric_now(&server, "lapsd_requests{state=\"waiting\"}").await,
        0.0
    );
    server.shutdown().await.expect("clean shutdown");
}
