//! The `lapsd` binary end to end: subcommand dispatch, JSON output, and errors that name the bad
//! value (exit code non-zero, no panic). Building this test also builds `target/*/lapsd`, which
//! `.ci/run` then serves for the openai-client check.
use std::process::{Command, Output};

fn lapsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lapsd"))
        .args(args)
        .output()
        .expect("run the lapsd binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sim_json_has_one_result_per_policy_with_every_request_completed() {
    let out = lapsd(&[
        "sim",
        "--requests",
        "300",
        "--load",
        "0.7",
        "--policy",
        "fcfs,laps-sd",
        "--format",
        "json",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let results = json["results"].as_array().expect("results array");
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["policy"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["fcfs", "laps-sd"]);
    for r in results {
        assert_eq!(r["completed"].as_u64(), Some(300), "{r}");
        let mean = r["mean_latency_s"].as_f64().expect("mean latency");
        let p99 = r["p99_latency_s"].as_f64().expect("p99 latency");
        assert!(mean > 0.0 && p99 >= mean, "{r}");
    }
}

#[test]
fn unknown_policy_is_named_in_the_error() {
    let out = lapsd(&["sim", "--requests", "10", "--policy", "fcfs,nosuchpolicy"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nosuchpolicy"),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn missing_trace_file_is_named_in_the_error() {
    let out = lapsd(&["sim", "--trace", "/nonexistent/trace.jsonl"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/trace.jsonl"),
        "stderr: {}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("panicked"),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn bad_draft_spec_is_named_in_the_error() {
    let out = lapsd(&["generate", "--draft", "self:abc", "--prompt", "hi"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("self:abc"),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn unknown_subcommand_fails_with_usage() {
    let out = lapsd(&["frobnicate"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("frobnicate"),
        "stderr: {}",
        stderr(&out)
    );
}
