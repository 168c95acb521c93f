//! The `lapsd sim` command surface: flags parse, JSON has the documented fields, bad input gives
//! errors naming what was wrong, traces and length files replay.

mod common;

use clap::Parser;
use common::cli::{args, Cli, TempDir};
use lapsd_sim::cli::{experiment_from_args, render};

fn json_of(extra: &[&str]) -> serde_json::Value {
    let a = args(extra);
    let results = experiment_from_args(&a)
        .expect("valid")
        .run(None)
        .expect("runs");
    let text = render(&a, results).expect("renders");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn json_has_the_documented_fields_for_every_policy() {
    let v = json_of(&[
        "--requests",
        "300",
        "--load",
        "0.7",
        "--format",
        "json",
        "--workload",
        "thinky",
    ]);
    let results = v["results"].as_array().expect("results array");
    assert_eq!(results.len(), lapsd_core::PolicyKind::ALL.len());
    for r in results {
        for field in [
            "completed",
            "mean_latency_s",
            "p50_latency_s",
            "p90_latency_s",
            "p99_latency_s",
            "mean_ttft_s",
            "mean_normalized_latency_s_per_token",
            "throughput_rps",
            "preemptions",
        ] {
            assert!(
                r[field].is_number(),
                "{}: field {field} in {r}",
                r["policy"]
            );
        }
        assert!(r["policy"].is_string());
        assert_eq!(r["workload"], "thinky");
        assert_eq!(r["load"], 0.7);
        assert_eq!(r["predictor"], "noisy-oracle(sigma=0.5)");
        assert_eq!(r["completed"], 300);
    }
}

#[test]
fn same_seed_same_json_and_policy_subset() {
    let flags = [
        "--requests",
        "200",
        "--policy",
        "fcfs,laps-sd",
        "--loads",
        "0.5,0.9",
        "--format",
        "json",
        "--seed",
        "3",
    ];
    let a = json_of(&flags);
    assert_eq!(a, json_of(&flags));
    let names: Vec<&str> = a["results"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["policy"].as_str())
        .collect();
    assert_eq!(names, ["fcfs", "laps-sd", "fcfs", "laps-sd"]);
}

#[test]
fn bad_flags_are_errors_naming_the_field() {
    let err = experiment_from_args(&args(&["--policy", "fcfs,nope"])).expect_err("unknown policy");
    assert!(err.to_string().contains("nope"), "{err}");
    let err = experiment_from_args(&args(&["--load=-1"])).expect_err("negative load");
    assert!(err.to_string().contains("load"), "{err}");
    let err = experiment_from_args(&args(&["--max-batch", "0"])).expect_err("zero batch");
    assert!(err.to_string().contains("max-batch"), "{err}");
    assert!(Cli::try_parse_from(["sim", "--rate", "1", "--load", "0.5"]).is_err());
}

#[test]
fn trace_errors_name_line_and_field_and_a_good_trace_replays() {
    let dir = TempDir::new("lapsd-sim-cli");
    let bad = dir.write(
        "bad.jsonl",
        "{\"arrival_s\": 0.0, \"prompt_tokens\": 10, \"output_tokens\": 20}\n\
         {\"arrival_s\": 1.0, \"prompt_tokens\": 10, \"output_tokens\": \"many\"}\n",
    );
    let err = experiment_from_args(&args(&["--trace", &bad])).expect_err("malformed trace");
    assert_eq!(
        err.to_string(),
        "trace line 2: field `output_tokens`: expected an integer between 1 and 4294967295, got \"many\""
    );
    let lines: String = (0..50)
        .map(|i| format!("{{\"arrival_s\": {}, \"prompt_tokens\": 16, \"output_tokens\": {}, \"acceptance_rate\": 0.7}}\n", f64::from(i) * 0.5, 10 + i))
        .collect();
    let good = dir.write("good.jsonl", &lines);
    let v = json_of(&["--trace", &good, "--format", "json", "--policy", "fcfs,las"]);
    let results = v["results"].as_array().expect("array");
    assert_eq!(results.len(), 2);
    assert!(results
        .iter()
        .all(|r| r["completed"] == 50 && r["load"].is_null()));
    let err = experiment_from_args(&args(&["--trace", &good, "--load", "0.5"]))
        .expect_err("trace + load");
    assert!(err.to_string().contains("trace"), "{err}");
}

/// A served trace's text predictions reach the length-aware policies: srpt on one sequence runs
/// the request predicted shorter first, so wrong predictions cost mean latency and right ones
/// do not.
#[test]
fn trace_predictions_steer_length_aware_policies() {
    let dir = TempDir::new("lapsd-sim-pred");
    let mean_latency = |short_predicted: u32, long_predicted: u32| {
        let path = dir.write(
            &format!("t{short_predicted}_{long_predicted}.jsonl"),
            &format!(
                "{{\"arrival_s\": 0.0, \"prompt_tokens\": 8, \"output_tokens\": 200, \"acceptance_rate\": 0.5, \"predicted_output_tokens\": {long_predicted}}}\n\
                 {{\"arrival_s\": 0.0, \"prompt_tokens\": 8, \"output_tokens\": 5, \"acceptance_rate\": 0.5, \"predicted_output_tokens\": {short_predicted}}}\n"
            ),
        );
        let v = json_of(&[
            "--trace",
            &path,
            "--format",
            "json",
            "--policy",
            "srpt",
            "--predictor",
            "online",
            "--max-batch",
            "1",
        ]);
        v["results"][0]["mean_latency_s"]
            .as_f64()
            .expect("a number")
    };
    let right = mean_latency(5, 200);
    let wrong = mean_latency(400, 200);
    assert!(wrong > right * 1.5, "right {right} wrong {wrong}");
}

#[test]
fn lengths_file_resamples_its_pairs() {
    let dir = TempDir::new("lapsd-lengths");
    let path_text = dir.write(
        "pairs.jsonl",
        "{\"arrival_s\":0.0,\"prompt_tokens\":7,\"output_tokens\":33}\n\
         {\"arrival_s\":1.0,\"prompt_tokens\":9,\"output_tokens\":55}\n",
    );
    let a = args(&[
        "--requests",
        "200",
        "--load",
        "0.7",
        "--policy",
        "fcfs",
        "--lengths",
        &path_text,
        "--format",
        "json",
    ]);
    let e = experiment_from_args(&a).expect("valid");
    let runs = e.prepare().expect("prepares");
    assert_eq!(runs[0].requests.len(), 200);
    for r in &runs[0].requests {
        let pair = (r.size.prompt_tokens, r.size.output_tokens);
        assert!(pair == (7, 33) || pair == (9, 55), "{pair:?}");
        assert_eq!(
            r.max_tokens, 55,
            "the largest length: the same cap for every request"
        );
    }
    let results = e.run(None).expect("runs");
    assert_eq!(results[0].workload, "pairs");
    assert_eq!(results[0].completed, 200);
}
