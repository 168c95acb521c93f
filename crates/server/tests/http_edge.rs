//! The HTTP edge over real sockets on loopback (real server, scripted engine): API keys, Content-
//! Type, allowed hosts, CORS, header/body timeouts, body size, method/route errors, 429's
//! Retry-After, `GET /v1/models/{id}`, refused parameters, and 503s on kept-alive connections
//! while the server drains. Raw TCP where a client library would hide what is tested.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use lapsd_core::PolicyKind;
use lapsd_server::{ApiKeys, ServerConfig, ServerHandle};
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn fast() -> lapsd_server::ModelLoader {
    scripted_loader(Duration::from_millis(1))
}

fn host(server: &ServerHandle) -> String {
    server.local_addr.to_string()
}

const JSON: &str = "Content-Type: application/json\r\n";

async fn exchange(server: &ServerHandle, request: &str) -> RawResponse {
    let mut stream = raw_connect(server).await;
    raw_exchange(&mut stream, request).await
}

fn with_keys(keys: &[&str]) -> ServerConfig {
    let mut cfg = config(PolicyKind::Gittins);
    cfg.http.api_keys = ApiKeys::new(keys);
    cfg
}

#[tokio::test]
async fn api_keys_guard_v1_but_not_health_or_metrics() {
    let server = start(with_keys(&["key-one", "key-two"]), fast()).await;
    let h = host(&server);
    let completion = json!({"prompt": "hi", "max_tokens": 3}).to_string();
    for auth in [
        "",
        "Authorization: Bearer wrong-key\r\n",
        "Authorization: key-two\r\n",
    ] {
        for request in [
            raw_get("/v1/models", &h, auth),
            raw_post("/v1/completions", &h, &format!("{auth}{JSON}"), &completion),
        ] {
            let r = exchange(&server, &request).await;
            assert_eq!(r.status, 401, "{request} -> {r:?}");
            let v = r.json();
            assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert!(!r.body.contains("wrong-key"), "the key is echoed: {v}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    let auth = "Authorization: Bearer key-two\r\n";
    let r = exchange(&server, &raw_get("/v1/models", &h, auth)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["data"][0]["id"], "scripted");
    let r = exchange(
        &server,
        &raw_post("/v1/completions", &h, &format!("{auth}{JSON}"), &completion),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["choices"][0]["text"], scripted_text(3));
    for open in ["/health", "/metrics"] {
        let r = exchange(&server, &raw_get(open, &h, "")).await;
        assert_eq!(r.status, 200, "{open} needs no key: {r:?}");
    }
    let (_, text) = get_text(&server, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "lapsd_requests_rejected_total{reason=\"invalid_api_key\"}"
        ),
        Some(6.0),
        "three bad keys on two routes"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn post_bodies_must_be_declared_json() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let h = host(&server);
    let body = json!({"prompt": "hi", "max_tokens": 2}).to_string();
    for (content_type, status) in [
        ("Content-Type: text/plain\r\n", 415),
        ("Content-Type: application/x-www-form-urlencoded\r\n", 415),
        ("", 415),
        ("Content-Type: application/json; charset=utf-8\r\n", 200),
        ("Content-Type: Application/JSON\r\n", 200),
    ] {
        let r = exchange(
            &server,
            &raw_post("/v1/completions", &h, content_type, &body),
        )
        .await;
        assert_eq!(r.status, status, "{content_type:?} -> {r:?}");
        if status == 415 {
            let v = r.json();
            assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("application/json")),
                "{v}"
            );
        }
    }
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn loopback_server_answers_loopback_hosts_only_unless_configured() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let port = server.local_addr.port();
    for ok in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
    ] {
        let r = exchange(&server, &raw_get("/v1/models", &ok, "")).await;
        assert_eq!(r.status, 200, "{ok} -> {r:?}");
    }
    for path in ["/v1/models", "/health"] {
        let r = exchange(&server, &raw_get(path, "attacker.example:8000", "")).await;
        assert_eq!(r.status, 403, "{path} -> {r:?}");
        let v = r.json();
        assert_eq!(v["error"]["code"], "host_not_allowed", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("attacker.example:8000")),
            "the host is named: {v}"
        );
    }
    server.shutdown().await.expect("clean shutdown");

    let mut cfg = config(PolicyKind::Gittins);
    cfg.http.allowed_hosts = Some(vec!["api.example".into()]);
    let server = start(cfg, fast()).await;
    let r = exchange(&server, &raw_get("/v1/models", "api.example:443", "")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = exchange(&server, &raw_get("/v1/models", "localhost", "")).await;
    assert_eq!(r.status, 403, "{r:?}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn cors_headers_only_for_configured_origins() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let h = host(&server);
    let r = exchange(
        &server,
        &raw_get("/v1/models", &h, "Origin: http://ui.example\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    server.shutdown().await.expect("clean shutdown");

    let mut cfg = with_keys(&["k"]);
    cfg.http.cors_origins = vec!["http://ui.example".into()];
    let server = start(cfg, fast()).await;
    let h = host(&server);
    // A preflight carries no key; it is answered before authentication.
    let preflight = format!(
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {h}\r\nOrigin: http://ui.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n"
    );
    let r = exchange(&server, &preflight).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://ui.example")
    );
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{r:?}");
    let r = exchange(
        &server,
        &raw_get(
            "/v1/models",
            &h,
            "Origin: http://ui.example\r\nAuthorization: Bearer k\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://ui.example")
    );
    let r = exchange(
        &server,
        &raw_get(
            "/v1/models",
            &h,
            "Origin: http://other.example\r\nAuthorization: Bearer k\r\n",
        ),
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    server.shutdown().await.expect("clean shutdown");
}

/// Generous bound for "closed by a timeout of 1 s" (the limit the tests allow, not a target).
const CLOSE_LIMIT: Duration = Duration::from_secs(1 + 5);

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let mut cfg = config(PolicyKind::Gittins);
    cfg.http.header_timeout_s = 1.0;
    let server = start(cfg, fast()).await;
    let h = host(&server);

    // A socket that never sends a byte.
    let mut silent = raw_connect(&server).await;
    // Slow-loris: a header line trickling in a byte at a time, never finished.
    let mut slow = raw_connect(&server).await;
    slow.write_all(format!("GET /v1/models HTTP/1.1\r\nHost: {h}\r\n").as_bytes())
        .await
        .expect("written");
    let (mut slow_read, mut slow_write) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..60 {
            if slow_write.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // A kept-alive connection left idle after one request.
    let mut idle = raw_connect(&server).await;
    let r = raw_exchange(&mut idle, &raw_get("/v1/models", &h, "")).await;
    assert_eq!(r.status, 200);

    let started = tokio::time::Instant::now();
    expect_closed_within(&mut silent, CLOSE_LIMIT).await;
    expect_closed_within(&mut idle, CLOSE_LIMIT.saturating_sub(started.elapsed())).await;
    let slow_closed = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while let Ok(n) = slow_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(CLOSE_LIMIT.saturating_sub(started.elapsed()), slow_closed)
        .await
        .expect("the slow-header connection is closed by the header timeout");
    trickle.abort();
    // The server still serves new connections.
    let r = exchange(&server, &raw_get("/health", &h, "")).await;
    assert_eq!(r.status, 200);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn slow_body_gets_408_and_the_connection_is_closed() {
    let mut cfg = config(PolicyKind::Gittins);
    cfg.http.body_timeout_s = 1.0;
    let server = start(cfg, fast()).await;
    let h = host(&server);
    let mut stream = raw_connect(&server).await;
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {h}\r\n{JSON}Content-Length: 100\r\n\r\n{{\"prompt\": "
    );
    stream.write_all(head.as_bytes()).await.expect("written");
    let r = tokio::time::timeout(CLOSE_LIMIT, read_response(&mut stream))
        .await
        .expect("a response once the body timeout passes");
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    assert_eq!(r.header("connection"), Some("close"));
    expect_closed_within(&mut stream, CLOSE_LIMIT).await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn declared_oversize_body_is_413_without_reading_it() {
    let mut cfg = config(PolicyKind::Gittins);
    // Were the body read, the answer would wait for this timeout.
    cfg.http.body_timeout_s = 120.0;
    let server = start(cfg, fast()).await;
    let h = host(&server);
    let mut stream = raw_connect(&server).await;
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {h}\r\n{JSON}Content-Length: 50000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("written");
    let r = tokio::time::timeout(Duration::from_secs(30), read_response(&mut stream))
        .await
        .expect("413 before any body byte is sent");
    assert_eq!(r.status, 413, "{r:?}");
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("50000000")),
        "{v}"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn methods_routes_and_model_ids_get_openai_answers() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    let h = host(&server);
    for (request, status, code) in [
        (
            raw_get("/v1/completions", &h, ""),
            405,
            "method_not_allowed",
        ),
        (
            raw_post("/v1/models", &h, JSON, "{}"),
            405,
            "method_not_allowed",
        ),
        (raw_get("/v1/nothing", &h, ""), 404, "not_found"),
        (raw_get("/v1/models/gpt-4", &h, ""), 404, "model_not_found"),
    ] {
        let r = exchange(&server, &request).await;
        assert_eq!(r.status, status, "{request} -> {r:?}");
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let one = exchange(&server, &raw_get("/v1/models/scripted", &h, "")).await;
    assert_eq!(one.status, 200, "{one:?}");
    let list = exchange(&server, &raw_get("/v1/models", &h, "")).await;
    assert_eq!(one.json(), list.json()["data"][0]);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn queue_full_429_says_when_to_retry() {
    let mut cfg = config(PolicyKind::Gittins);
    cfg.max_queue = 1;
    let server = start(cfg, scripted_loader(Duration::from_millis(20))).await;
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
    let r = exchange(
        &server,
        &raw_post(
            "/v1/completions",
            &host(&server),
            JSON,
            &json!({"prompt": "hi", "max_tokens": 2}).to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}");
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "{retry_after}");
    drop(body);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn prompt_shapes_and_refused_parameters() {
    let server = start(config(PolicyKind::Gittins), fast()).await;
    // A list of one token-id list is that prompt ("Hi" = bytes 72, 105).
    let (s, v) = post_json(
        &server,
        "/v1/completions",
        &json!({"prompt": [[72, 105]], "max_tokens": 4}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(v["choices"][0]["text"], scripted_text(4));
    let cases = [
        (json!({"prompt": [[72], [105]]}), "prompt", "batched"),
        (json!({"prompt": {"text": "hi"}}), "prompt", "token ids"),
        (
            json!({"prompt": "hi", "stop": 7}),
            "stop",
            "list of strings",
        ),
        (
            json!({"prompt": "hi", "logit_bias": {"x": 1}}),
            "logit_bias",
            "token ids",
        ),
        (
            json!({"prompt": "hi", "repetition_penalty": 0}),
            "repetition_penalty",
            "(0, 2]",
        ),
        (
            json!({"prompt": "hi", "frequency_penalty": -2.5}),
            "frequency_penalty",
            "[-2, 2]",
        ),
        (
            json!({"prompt": "hi", "logit_bias": {"72": 500}}),
            "logit_bias",
            "[-100, 100]",
        ),
        (
            json!({"prompt": "hi", "suffix": "!"}),
            "suffix",
            "not supported",
        ),
    ];
    for (body, param, says) in cases {
        let (s, v) = post_json(&server, "/v1/completions", &body).await;
        assert_eq!(s, 400, "{body} -> {v}");
        assert_eq!(v["error"]["param"], param, "{body} -> {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body} -> {message}");
        assert!(!message.contains("untagged"), "{body} -> {message}");
    }
    let chat = |extra: serde_json::Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    };
    for (extra, param) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
    ] {
        let body = chat(extra);
        let (s, v) = post_json(&server, "/v1/chat/completions", &body).await;
        assert_eq!(s, 400, "{body} -> {v}");
        assert_eq!(v["error"]["param"], param, "{body} -> {v}");
        assert!(!v.to_string().contains("MessageContent"), "{v}");
    }
    // Neutral values of the same fields are accepted.
    let body = chat(
        json!({"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
        "response_format": {"type": "text"}, "tools": [], "tool_choice": "none"}),
    );
    let (s, v) = post_json(&server, "/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn kept_alive_connections_get_503_while_draining() {
    let server = start(
        config(PolicyKind::Gittins),
        scripted_loader(Duration::from_millis(20)),
    )
    .await;
    let h = host(&server);
    let addr = server.local_addr;
    // Two kept-alive connections, each used once before the shutdown.
    let mut probe = raw_connect(&server).await;
    let mut late = raw_connect(&server).await;
    for stream in [&mut probe, &mut late] {
        let r = raw_exchange(stream, &raw_get("/v1/models", &h, "")).await;
        assert_eq!(r.status, 200);
    }
    // An in-flight request keeps the drain going.
    let inflight = tokio::spawn(async move {
        let resp = client()
            .post(format!("http://{addr}/v1/completions"))
            .json(&json!({"prompt": "hi", "max_tokens": 150}))
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
    let stopping = tokio::spawn(server.shutdown());
    // /health on the kept-alive probe turns 503 once the shutdown has begun.
    let mut began = false;
    for _ in 0..100 {
        let r = raw_exchange(&mut probe, &raw_get("/health", &h, "")).await;
        if r.status == 503 {
            began = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(began, "/health never reported the shutdown");
    let body = json!({"prompt": "hi", "max_tokens": 2}).to_string();
    let r = raw_exchange(&mut late, &raw_post("/v1/completions", &h, JSON, &body)).await;
    assert_eq!(r.status, 503, "{r:?}");
    let v = r.json();
    assert_eq!(v["error"]["code"], "shutting_down", "{v}");
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    assert_eq!(r.header("connection"), Some("close"));
    let (status, v) = inflight.await.expect("task");
    assert_eq!(status, 200, "the in-flight request finished: {v}");
    assert_eq!(v["choices"][0]["text"], scripted_text(150));
    tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("shutdown in time")
        .expect("task")
        .expect("clean shutdown");
}
