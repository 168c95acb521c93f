//! End-to-end tests of the benchmark client against a tiny real HTTP server started in the test
//! (axum on 127.0.0.1:0). The server is a fixture for the CLIENT: it streams OpenAI-style chunks
//! with known delays, or fails in known ways (HTTP 500, dropped connection, stream without
//! [DONE], non-JSON chunk), and the tests check what the client measured and counted.
//! Timing checks are lower bounds only (the server sleeps at least this long), never upper bounds.
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use lapsd_bench::client::{ClientConfig, Endpoint};
use lapsd_bench::report::{BenchReport, RunSettings};
use lapsd_bench::runner::{run_plan, RunConfig};
use lapsd_bench::stats::Slo;
use lapsd_bench::workload::{Plan, WorkItem, WorkloadSource};

/// Delay before the first content chunk.
const FIRST_TOKEN_DELAY_MS: u64 = 80;
/// Delay between content chunks.
const TOKEN_GAP_MS: u64 = 15;

/// What the fixture streams for one request, chosen by the prompt.
enum Behaviour {
    /// `max_tokens` chunks, finish_reason `length`, usage, SD stats, [DONE].
    Stream,
    /// Half of `max_tokens` (at least 1), finish_reason `stop` (an EOS despite `ignore_eos`).
    Short,
    /// HTTP 500 with an OpenAI error body.
    Fail500,
    /// Two chunks, then the connection is cut.
    Drop,
    /// All chunks but no [DONE], then a clean close.
    NoDone,
    /// One chunk that is not JSON.
    Garbage,
    /// Headers, then silence for 10 s before the first token.
    Stall,
}

fn chunk(value: Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

async fn completions(Json(body): Json<Value>) -> Response {
    let prompt = body["prompt"]
        .as_str()
        .or_else(|| body["messages"][0]["content"].as_str())
        .unwrap_or("")
        .to_string();
    let is_chat = body.get("messages").is_some();
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(1) as usize;
    assert_eq!(body["stream"], true, "client must stream");
    let behaviour = match prompt.as_str() {
        "fail500" => Behaviour::Fail500,
        "drop" => Behaviour::Drop,
        "nodone" => Behaviour::NoDone,
        "garbage" => Behaviour::Garbage,
        "stall" => Behaviour::Stall,
        "short" => Behaviour::Short,
        _ => Behaviour::Stream,
    };
    let (max_tokens, finish_reason) = match behaviour {
        Behaviour::Short => ((max_tokens / 2).max(1), "stop"),
        _ => (max_tokens, "length"),
    };
    if let Behaviour::Fail500 = behaviour {
        let error = json!({"error": {"message": "fixture failure", "type": "server_error"}});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response();
    }
    // Step 0 sends an empty role chunk (chat) or nothing; steps 1..=n send tokens; then the tail.
    let stream = futures_util::stream::unfold(0usize, move |step| {
        let behaviour_tag = match behaviour {
            Behaviour::Stream | Behaviour::Short => 0,
            Behaviour::Drop => 1,
            Behaviour::NoDone => 2,
            Behaviour::Garbage => 3,
            Behaviour::Stall => 4,
            Behaviour::Fail500 => unreachable!("answered above"),
        };
        async move {
            if step == 0 {
                let first = if is_chat {
                    chunk(
                        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
                    )
                } else {
                    Bytes::from_static(b": fixture keep-alive\n\n")
                };
                return Some((Ok::<Bytes, std::io::Error>(first), 1));
            }
            if step <= max_tokens {
                let delay = match (step, behaviour_tag) {
                    (1, 4) => 10_000,
                    (1, _) => FIRST_TOKEN_DELAY_MS,
                    _ => TOKEN_GAP_MS,
                };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if behaviour_tag == 1 && step == 3 {
                    return Some((
                        Err(std::io::Error::other("fixture drops the connection")),
                        step + 1,
                    ));
                }
                if behaviour_tag == 3 {
                    return if step == 1 {
                        Some((
                            Ok(Bytes::from_static(b"data: {not json\n\n")),
                            max_tokens + 10,
                        ))
                    } else {
                        None
                    };
                }
                let piece = if is_chat {
                    json!({"choices": [{"index": 0, "delta": {"content": format!("tok{step} ")}}]})
                } else {
                    json!({"choices": [{"index": 0, "text": format!("tok{step} ")}]})
                };
                return Some((Ok(chunk(piece)), step + 1));
            }
            if step == max_tokens + 1 {
                let end = if is_chat {
                    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]})
                } else {
                    json!({"choices": [{"index": 0, "text": "", "finish_reason": finish_reason}]})
                };
                let tail = json!({
                    "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": max_tokens, "total_tokens": max_tokens + 3},
                    "metrics": {"speculative_decoding": {"num_drafted_tokens": 8, "num_accepted_tokens": 6, "mean_acceptance_length": 2.5, "num_verify_steps": 4}}
                });
                let mut bytes = chunk(end).to_vec();
                bytes.extend_from_slice(&chunk(tail));
                if behaviour_tag != 2 {
                    bytes.extend_from_slice(b"data: [DONE]\n\n");
                }
                return Some((Ok(Bytes::from(bytes)), step + 1));
            }
            None
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "fixture-model", "object": "model"}]}))
}

/// Starts the fixture on a thread with its own runtime; returns its address.
async fn echo_authorization(headers: axum::http::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn start_fixture() -> SocketAddr {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fixture runtime");
        runtime.block_on(async move {
            let app = Router::new()
                .route("/v1/completions", post(completions))
                .route("/v1/chat/completions", post(completions))
                .route("/v1/models", get(models))
                .route("/echo-authorization", get(echo_authorization));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send addr");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    addr_rx.recv().expect("fixture address")
}

fn item(prompt: &str, max_tokens: u32) -> WorkItem {
    WorkItem {
        prompt: prompt.into(),
        prompt_tokens: 1,
        max_tokens,
    }
}

fn run(addr: SocketAddr, endpoint: Endpoint, plan: &Plan, slo: Slo) -> BenchReport {
    run_with_timeout(addr, endpoint, plan, slo, Duration::from_secs(30))
}

fn run_with_timeout(
    addr: SocketAddr,
    endpoint: Endpoint,
    plan: &Plan,
    slo: Slo,
    request_timeout: Duration,
) -> BenchReport {
    let config = RunConfig {
        client: ClientConfig {
            base_url: format!("http://{addr}"),
            endpoint,
            model: "fixture-model".into(),
            temperature: 0.0,
            ignore_eos: false,
            extra_body: serde_json::Map::new(),
            request_timeout,
        },
        max_concurrency: Some(4),
        show_progress: false,
    };
    let runtime = tokio::runtime::Runtime::new().expect("client runtime");
    let http = lapsd_bench::client::build_http_client(None).expect("http client");
    let outcome = runtime.block_on(run_plan(plan, http, &config));
    let settings = RunSettings {
        url: config.client.base_url.clone(),
        endpoint,
        model: "fixture-model".into(),
        workload: WorkloadSource::Trace {
            path: "inline".into(),
        },
        rate_per_s: Some(10.0),
        burstiness: 1.0,
        max_concurrency: Some(4),
        requests: plan.items.len(),
        seed: 0,
        max_output_tokens: 512,
        output_scale: 1.0,
        token_counter: "chars/4".into(),
        temperature: 0.0,
        ignore_eos: false,
        extra_body: serde_json::Map::new(),
        slo,
    };
    BenchReport::build(Some("fixture".into()), settings, plan, &outcome)
}

#[test]
fn streamed_requests_are_timed_and_counted() {
    let addr = start_fixture();
    for endpoint in [Endpoint::Completions, Endpoint::Chat] {
        let plan = Plan {
            items: vec![item("hello", 6), item("world", 3), item("again", 1)],
            arrivals_s: vec![0.0, 0.05, 0.1],
        };
        let report = run(
            addr,
            endpoint,
            &plan,
            Slo {
                ttft_ms: Some(1e9),
                tpot_ms: None,
            },
        );
        assert_eq!(
            report.completed, 3,
            "{endpoint:?}: {:?}",
            report.errors_by_kind
        );
        assert_eq!(report.failed, 0);
        assert_eq!(report.total_output_tokens, 6 + 3 + 1);
        assert_eq!(
            report.total_input_tokens, 9,
            "usage prompt_tokens (3 each) preferred"
        );
        let outputs: Vec<u32> = report.requests.iter().map(|r| r.output_tokens).collect();
        assert_eq!(outputs, vec![6, 3, 1]);
        for (record, n) in report.requests.iter().zip([6u64, 3, 1]) {
            let ttft_ms = record.ttft_ms.expect("ttft measured");
            assert!(ttft_ms >= FIRST_TOKEN_DELAY_MS as f64, "ttft {ttft_ms}");
            let min_e2e_ms = (FIRST_TOKEN_DELAY_MS + (n - 1) * TOKEN_GAP_MS) as f64;
            assert!(
                record.e2e_ms >= min_e2e_ms,
                "e2e {} < {min_e2e_ms}",
                record.e2e_ms
            );
            assert!(record.e2e_ms >= ttft_ms);
            assert_eq!(record.tpot_ms.is_some(), n > 1);
            assert_eq!(record.acceptance_rate, Some(0.75));
            assert_eq!(
                (
                    record.drafted_tokens,
                    record.accepted_tokens,
                    record.verify_steps
                ),
                (Some(8), Some(6), Some(4))
            );
            // The fixture's usage says 3 prompt tokens.
            assert_eq!(record.server_prompt_tokens, Some(3));
        }
        // ITL samples: one per content chunk after the first: 5 + 2 + 0.
        assert_eq!(report.itl.expect("itl").count, 7);
        assert!(report.itl.unwrap().min_ms >= 0.0);
        let sd = report.speculative_decoding.as_ref().expect("sd stats");
        assert_eq!(
            (
                sd.requests_with_stats,
                sd.drafted_tokens,
                sd.accepted_tokens
            ),
            (3, 24, 18)
        );
        assert_eq!(sd.acceptance_rate, Some(0.75));
        assert_eq!(sd.mean_acceptance_length, Some(2.5));
        assert!(report.goodput_per_s.expect("slo set") > 0.0);
        assert_eq!(report.finish_reasons.get("length"), Some(&3));
        assert_eq!(report.ended_before_max_tokens, 0);
        assert!(report
            .requests
            .iter()
            .all(|r| r.finish_reason.as_deref() == Some("length")));
    }
}

#[test]
fn outputs_that_end_before_max_tokens_are_counted() {
    let addr = start_fixture();
    for endpoint in [Endpoint::Completions, Endpoint::Chat] {
        let plan = Plan {
            items: vec![item("short", 6), item("hello", 4), item("short", 1)],
            arrivals_s: vec![0.0, 0.01, 0.02],
        };
        let report = run(addr, endpoint, &plan, Slo::default());
        assert_eq!(report.completed, 3, "{endpoint:?}");
        let outputs: Vec<u32> = report.requests.iter().map(|r| r.output_tokens).collect();
        assert_eq!(outputs, vec![3, 4, 1]);
        // A one-token "short" request still reached its max_tokens.
        assert_eq!(report.ended_before_max_tokens, 1, "{endpoint:?}");
        assert_eq!(report.finish_reasons.get("stop"), Some(&2));
        assert_eq!(report.finish_reasons.get("length"), Some(&1));
        assert!(report.table().contains("Ended before max_tokens:"));
    }
}

#[test]
fn server_failures_are_counted_by_kind_not_crashes() {
    let addr = start_fixture();
    let plan = Plan {
        items: vec![
            item("fine", 4),
            item("fail500", 4),
            item("drop", 6),
            item("nodone", 2),
            item("garbage", 4),
            item("fail500", 4),
        ],
        arrivals_s: vec![0.0; 6],
    };
    let report = run(addr, Endpoint::Completions, &plan, Slo::default());
    assert_eq!(report.completed, 1);
    assert_eq!(report.failed, 5);
    let expected: Vec<(String, usize)> = vec![
        ("disconnected".into(), 1),
        ("http_500".into(), 2),
        ("malformed_stream".into(), 2),
    ];
    assert_eq!(
        report.errors_by_kind.into_iter().collect::<Vec<_>>(),
        expected
    );
    let tags: Vec<Option<&str>> = report.requests.iter().map(|r| r.error.as_deref()).collect();
    assert_eq!(
        tags,
        vec![
            None,
            Some("http_500"),
            Some("disconnected"),
            Some("malformed_stream"),
            Some("malformed_stream"),
            Some("http_500")
        ]
    );
    assert_eq!(report.total_output_tokens, 4);
    assert!(report.goodput_per_s.is_none());
}

#[test]
fn stalled_streams_are_counted_as_timeouts() {
    let addr = start_fixture();
    let plan = Plan {
        items: vec![item("stall", 3), item("fine", 2)],
        arrivals_s: vec![0.0, 0.0],
    };
    let report = run_with_timeout(
        addr,
        Endpoint::Completions,
        &plan,
        Slo::default(),
        Duration::from_millis(500),
    );
    assert_eq!(report.completed, 1);
    assert_eq!(report.errors_by_kind.get("timeout"), Some(&1));
    assert_eq!(report.requests[0].error.as_deref(), Some("timeout"));
    assert!(
        report.requests[0].e2e_ms >= 500.0,
        "timed out no earlier than the limit"
    );
}

#[test]
fn refused_connections_are_counted_as_connect_errors() {
    // Bind then drop a listener: nothing listens on that port any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let plan = Plan {
        items: vec![item("a", 2), item("b", 2)],
        arrivals_s: vec![0.0, 0.0],
    };
    let report = run(addr, Endpoint::Completions, &plan, Slo::default());
    assert_eq!(report.completed, 0);
    assert_eq!(report.errors_by_kind.get("connect"), Some(&2));
    assert!(report.e2e.is_none());
}

#[test]
fn cli_runs_a_profile_writes_json_and_plots() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }
    #[derive(clap::Subcommand)]
    enum Command {
        Bench(lapsd_bench::cli::BenchArgs),
    }
    let parse = |args: &[&str]| match Cli::try_parse_from(args).expect("flags parse").command {
        Command::Bench(args) => args,
    };
    let addr = start_fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let sim = dir.path().join("sim.jsonl");
    let plots = dir.path().join("plots");
    let url = format!("http://{addr}");
    let args = parse(&[
        "lapsd",
        "bench",
        "--url",
        &url,
        "--workload",
        "chatbot",
        "--rate",
        "50",
        "--requests",
        "5",
        "--seed",
        "3",
        "--max-output-tokens",
        "8",
        "--label",
        "fcfs",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plots.to_str().unwrap(),
        "--emit-sim-trace",
        sim.to_str().unwrap(),
        "--no-progress",
        "--slo-ttft-ms",
        "60000",
    ]);
    lapsd_bench::cli::run(args).expect("bench runs");
    let report = BenchReport::load(&out).expect("result JSON reads back");
    assert_eq!(report.completed, 5);
    assert_eq!(
        report.settings.model, "fixture-model",
        "discovered from /v1/models"
    );
    assert_eq!(report.label.as_deref(), Some("fcfs"));
    let sim_lines: Vec<Value> = std::fs::read_to_string(&sim)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sim_lines.len(), 5);
    let sim_outputs: u64 = sim_lines
        .iter()
        .map(|l| l["output_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(
        sim_outputs, report.total_output_tokens,
        "fixture generates max_tokens each"
    );
    assert!(plots.join("fcfs_rate50_latency_cdf.png").is_file());
    assert!(plots.join("fcfs_rate50_latency_cdf.svg").is_file());

    // The vs-rate mode over two result files.
    let mut second = report.clone();
    second.settings.rate_per_s = Some(100.0);
    let second_path = dir.path().join("r2.json");
    second.save(&second_path).unwrap();
    let rate_dir = dir.path().join("rate");
    let args = parse(&[
        "lapsd",
        "bench",
        "plot",
        "--inputs",
        out.to_str().unwrap(),
        second_path.to_str().unwrap(),
        "--out",
        rate_dir.to_str().unwrap(),
    ]);
    lapsd_bench::cli::run(args).expect("plot runs");
    for stem in ["e2e_mean", "e2e_p99", "ttft_mean", "ttft_p99"] {
        assert!(
            rate_dir.join(format!("{stem}_vs_rate.png")).is_file(),
            "{stem}"
        );
        let svg = std::fs::read_to_string(rate_dir.join(format!("{stem}_vs_rate.svg"))).unwrap();
        assert!(svg.contains("fcfs"), "legend names the label");
    }
}

#[test]
fn cli_rejects_a_missing_workload_and_a_malformed_trace() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: lapsd_bench::cli::BenchArgs,
    }
    assert!(
        Cli::try_parse_from(["x", "--url", "http://a", "--rate", "1", "--requests", "1"]).is_err()
    );
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    std::fs::write(&trace, "{\"prompt\": \"a\", \"max_tokens\": 2, \"arrival_s\": 0}\n{\"prompt\": \"b\", \"arrival_s\": 1}\n").unwrap();
    let cli = Cli::try_parse_from(["x", "--trace", trace.to_str().unwrap(), "--dry-run"])
        .expect("parses");
    let err = lapsd_bench::cli::run(cli.bench).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains(":2:") && message.contains("max_tokens"),
        "{message}"
    );
}

#[test]
fn the_api_key_is_sent_as_a_bearer_token_on_every_request() {
    let addr = start_fixture();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sent = |key: Option<&str>| {
        let http = lapsd_bench::client::build_http_client(key).expect("http client");
        runtime.block_on(async {
            http.get(format!("http://{addr}/echo-authorization"))
                .send()
                .await
                .expect("sent")
                .text()
                .await
                .expect("body")
        })
    };
    assert_eq!(sent(Some("sk-test")), "Bearer sk-test");
    assert_eq!(sent(None), "");
    assert!(matches!(
        lapsd_bench::client::build_http_client(Some("bad\nkey")),
        Err(lapsd_bench::client::HttpClientError::InvalidApiKey)
    ));
}
