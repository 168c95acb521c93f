//! Per-policy summary statistics of a run and their table / JSON / CSV renderings.
//!
//! JSON shape: `{"results":[{"policy":..,"completed":..,"mean_latency_s":..,
//! "p50_latency_s":..,"p90_latency_s":..,"p99_latency_s":..,"mean_ttft_s":..,
//! "mean_normalized_latency_s_per_token":..,"throughput_rps":..,"preemptions":..}]}` plus context
//! fields (workload, load, rate, predictor, ...).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::server_model::SimOutcome;

/// Summary of one policy at one load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyResult {
    pub policy: String,
    pub workload: String,
    /// Target utilisation the arrival rate was derived from (`None` when a rate or trace was given).
    pub load: Option<f64>,
    pub rate_rps: f64,
    pub predictor: String,
    pub completed: usize,
    /// Requests refused because they can never fit the KV budget.
    pub never_fits: usize,
    pub mean_latency_s: f64,
    pub p50_latency_s: f64,
    pub p90_latency_s: f64,
    pub p99_latency_s: f64,
    pub mean_ttft_s: f64,
    /// Mean over requests of latency / output tokens.
    pub mean_normalized_latency_s_per_token: f64,
    /// Completed requests per second of simulated time (first arrival to last finish).
    pub throughput_rps: f64,
    /// Total preemptions (a request removed from the batch while unfinished).
    pub preemptions: u64,
    /// Total prefill recomputations after a preemption freed the KV.
    pub recomputes: u64,
    pub steps: u64,
    /// Busy time / simulated time.
    pub utilization: f64,
    /// Throughput over arrival rate in the second half of the arrivals: requests finished
    /// between the median and the last arrival time, over requests that arrived then. A stable
    /// server gives 1 up to the change of its queue length over that window (zero on average,
    /// of order queue length / requests); a queue that grows without bound gives its service
    /// rate over the arrival rate.
    #[serde(default)]
    pub throughput_to_arrivals: f64,
    /// The dispatch rule, when the run had replicas behind a dispatcher (`--replicas`,
    /// `--dispatch`); the statistics are then over every replica's requests, and `utilization`
    /// is the mean per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<String>,
    /// Number of replicas behind the dispatcher (with `dispatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
}

/// Context a result is labelled with.
#[derive(Debug, Clone, PartialEq)]
pub struct RunLabel {
    pub workload: String,
    pub load: Option<f64>,
    pub rate_rps: f64,
    pub predictor: String,
}

/// Nearest-rank percentile of sorted data (`q` in [0, 1]); 0 for empty data.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// See [`PolicyResult::throughput_to_arrivals`].
fn throughput_share(done: &[crate::server_model::CompletedRequest]) -> f64 {
    let mut arrivals: Vec<f64> = done.iter().map(|c| c.arrival_s).collect();
    arrivals.sort_by(f64::total_cmp);
    let (Some(&last), Some(&middle)) = (arrivals.last(), arrivals.get(arrivals.len() / 2)) else {
        return 0.0;
    };
    let in_window = |t: f64| t > middle && t <= last;
    let arrived = arrivals.iter().filter(|&&t| in_window(t)).count();
    let finished = done.iter().filter(|c| in_window(c.finish_s)).count();
    if arrived == 0 {
        1.0
    } else {
        finished as f64 / arrived as f64
    }
}

/// Summarises one run.
pub fn summarize(outcome: &SimOutcome, label: &RunLabel, first_arrival_s: f64) -> PolicyResult {
    let done = &outcome.completed;
    let mut latencies: Vec<f64> = done.iter().map(|c| c.latency_s()).collect();
    latencies.sort_by(f64::total_cmp);
    let span_s = (outcome.end_s - first_arrival_s).max(f64::MIN_POSITIVE);
    let throughput_to_arrivals = throughput_share(done);
    PolicyResult {
        policy: outcome.policy.clone(),
        workload: label.workload.clone(),
        load: label.load,
        rate_rps: label.rate_rps,
        predictor: label.predictor.clone(),
        completed: done.len(),
        never_fits: outcome.never_fits,
        mean_latency_s: mean(latencies.iter().copied()),
        p50_latency_s: percentile(&latencies, 0.50),
        p90_latency_s: percentile(&latencies, 0.90),
        p99_latency_s: percentile(&latencies, 0.99),
        mean_ttft_s: mean(done.iter().map(|c| c.ttft_s())),
        mean_normalized_latency_s_per_token: mean(
            done.iter()
                .map(|c| c.latency_s() / f64::from(c.output_tokens.max(1))),
        ),
        throughput_rps: done.len() as f64 / span_s,
        preemptions: done.iter().map(|c| u64::from(c.preemptions)).sum(),
        recomputes: done.iter().map(|c| u64::from(c.recomputes)).sum(),
        steps: outcome.steps,
        utilization: outcome.busy_s / span_s,
        throughput_to_arrivals,
        dispatch: None,
        replicas: None,
    }
}

/// The JSON document `lapsd sim --format json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonReport {
    pub seed: u64,
    pub requests: usize,
    pub speculation_length: u32,
    pub max_batch: usize,
    pub results: Vec<PolicyResult>,
}

/// Renders results as an aligned text table.
/// With replicas behind a dispatcher, a `dispatch` column follows `policy` and a last line gives
/// the replica count; without, the table is as it always was.
pub fn to_table(results: &[PolicyResult]) -> String {
    let dispatched = results.iter().any(|r| r.dispatch.is_some());
    let mut header: Vec<&str> = vec![
        "workload", "load", "rate/s", "policy", "done", "mean_s", "p50_s", "p90_s", "p99_s",
        "ttft_s", "s/token", "thru/s", "preempt", "recomp", "util",
    ];
    if dispatched {
        header.insert(4, "dispatch");
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut row = vec![
                r.workload.clone(),
                r.load.map_or("-".into(), |l| format!("{l:.2}")),
                format!("{:.3}", r.rate_rps),
                r.policy.clone(),
                r.completed.to_string(),
                format!("{:.3}", r.mean_latency_s),
                format!("{:.3}", r.p50_latency_s),
                format!("{:.3}", r.p90_latency_s),
                format!("{:.3}", r.p99_latency_s),
                format!("{:.3}", r.mean_ttft_s),
                format!("{:.4}", r.mean_normalized_latency_s_per_token),
                format!("{:.3}", r.throughput_rps),
                r.preemptions.to_string(),
                r.recomputes.to_string(),
                format!("{:.2}", r.utilization),
            ];
            if dispatched {
                row.insert(4, r.dispatch.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in &rows {
        line(row);
    }
    if let Some(first) = results.first() {
        let _ = writeln!(out, "predictor: {}", first.predictor);
        if let Some(replicas) = first.replicas {
            let _ = writeln!(
                out,
                "replicas: {replicas} (load = utilisation of each replica, rate = total)"
            );
        }
    }
    out
}

/// Renders results as CSV with a header line.
/// With replicas behind a dispatcher, `dispatch` and `replicas` columns close each line.
/// One CSV field (RFC 4180): quoted, with inner quotes doubled, when it holds a comma, a quote or
/// a line break (a policy label with several settings: `gittins[fcfs-slack=3,max-wait-factor=100]`).
fn csv_field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\"")).into()
    } else {
        value.into()
    }
}

pub fn to_csv(results: &[PolicyResult]) -> String {
    let dispatched = results.iter().any(|r| r.dispatch.is_some());
    let mut out = String::from(
        "workload,load,rate_rps,policy,predictor,completed,never_fits,mean_latency_s,p50_latency_s,\
         p90_latency_s,p99_latency_s,mean_ttft_s,mean_normalized_latency_s_per_token,\
         throughput_rps,preemptions,recomputes,steps,utilization",
    );
    out.push_str(if dispatched {
        ",dispatch,replicas\n"
    } else {
        "\n"
    });
    for r in results {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&r.workload),
            r.load.map_or(String::new(), |l| l.to_string()),
            r.rate_rps,
            csv_field(&r.policy),
            csv_field(&r.predictor),
            r.completed,
            r.never_fits,
            r.mean_latency_s,
            r.p50_latency_s,
            r.p90_latency_s,
            r.p99_latency_s,
            r.mean_ttft_s,
            r.mean_normalized_latency_s_per_token,
            r.throughput_rps,
            r.preemptions,
            r.recomputes,
            r.steps,
            r.utilization
        );
        if dispatched {
            let _ = write!(
                out,
                ",{},{}",
                r.dispatch.as_deref().unwrap_or(""),
                r.replicas.map_or(String::new(), |n| n.to_string())
            );
        }
        out.push('\n');
    }
    out
}

/// One policy against the best of a set of baselines and against the oracle, at one
/// (workload, load) point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub workload: String,
    pub load: Option<f64>,
    pub policy: String,
    pub mean_latency_s: f64,
    /// The baseline with the lowest mean latency at this point.
    pub best_baseline: String,
    pub best_baseline_mean_latency_s: f64,
    /// 1 - mean / best baseline mean (positive = the policy is faster).
    pub reduction_vs_best_baseline: f64,
    pub oracle_mean_latency_s: Option<f64>,
    /// mean / oracle mean (>= 1 when the oracle is the bound it should be).
    pub ratio_to_oracle: Option<f64>,
}

/// Compares `policy` with the best of `baselines` (and with `oracle`) at every (workload, load)
/// point of `results`, in order of first appearance. Points missing the policy or every
/// baseline are skipped.
pub fn compare(
    results: &[PolicyResult],
    policy: &str,
    baselines: &[&str],
    oracle: &str,
) -> Vec<Comparison> {
    let mut points: Vec<(String, Option<f64>)> = Vec::new();
    for r in results {
        let key = (r.workload.clone(), r.load);
        if !points.contains(&key) {
            points.push(key);
        }
    }
    points
        .into_iter()
        .filter_map(|(workload, load)| {
            let at = |name: &str| {
                results
                    .iter()
                    .find(|r| r.workload == workload && r.load == load && r.policy == name)
            };
            let subject = at(policy)?;
            let best = baselines
                .iter()
                .filter_map(|b| at(b))
                .min_by(|a, b| a.mean_latency_s.total_cmp(&b.mean_latency_s))?;
            let oracle_mean = at(oracle).map(|o| o.mean_latency_s);
            Some(Comparison {
                workload,
                load,
                policy: policy.to_string(),
                mean_latency_s: subject.mean_latency_s,
                best_baseline: best.policy.clone(),
                best_baseline_mean_latency_s: best.mean_latency_s,
                reduction_vs_best_baseline: 1.0 - subject.mean_latency_s / best.mean_latency_s,
                oracle_mean_latency_s: oracle_mean,
                ratio_to_oracle: oracle_mean.map(|o| subject.mean_latency_s / o),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_model::CompletedRequest;

    #[test]
    fn csv_fields_with_commas_are_quoted() {
        assert_eq!(csv_field("gittins"), "gittins");
        assert_eq!(
            csv_field("gittins[fcfs-slack=3,max-wait-factor=100]"),
            "\"gittins[fcfs-slack=3,max-wait-factor=100]\""
        );
        assert_eq!(csv_field("a\"b,c"), "\"a\"\"b,c\"");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let data: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&data, 0.5), 50.0);
        assert_eq!(percentile(&data, 0.99), 99.0);
        assert_eq!(percentile(&data, 1.0), 100.0);
        assert_eq!(percentile(&data, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn summary_statistics_are_computed_from_completions() {
        let c = |id, arrival_s, finish_s, first_token_s, output_tokens| CompletedRequest {
            id,
            arrival_s,
            finish_s,
            first_token_s,
            output_tokens,
            preemptions: 1,
            recomputes: 0,
        };
        let outcome = SimOutcome {
            policy: "fcfs".into(),
            completed: vec![c(0, 0.0, 2.0, 0.5, 4), c(1, 1.0, 5.0, 1.5, 2)],
            never_fits: 0,
            steps: 6,
            end_s: 5.0,
            busy_s: 4.0,
        };
        let label = RunLabel {
            workload: "w".into(),
            load: Some(0.5),
            rate_rps: 1.0,
            predictor: "p".into(),
        };
        let r = summarize(&outcome, &label, 0.0);
        assert_eq!(r.completed, 2);
        assert_eq!(r.mean_latency_s, 3.0);
        assert_eq!(r.p50_latency_s, 2.0);
        assert_eq!(r.p99_latency_s, 4.0);
        assert_eq!(r.mean_ttft_s, 0.5);
        assert_eq!(r.mean_normalized_latency_s_per_token, (0.5 + 2.0) / 2.0);
        assert_eq!(r.throughput_rps, 0.4);
        assert_eq!(r.preemptions, 2);
        assert_eq!(r.utilization, 0.8);
        let csv = to_csv(std::slice::from_ref(&r));
        assert_eq!(csv.lines().count(), 2);
        let table = to_table(std::slice::from_ref(&r));
        assert!(table.contains("fcfs"));
        assert!(!table.contains("dispatch") && !csv.contains("dispatch"));
        assert!(!serde_json::to_string(&r)
            .expect("json")
            .contains("dispatch"));

        // Replicas behind a dispatcher: a labelled column in the table and the CSV.
        let dispatched = PolicyResult {
            dispatch: Some("least-work".into()),
            replicas: Some(4),
            ..r
        };
        let table = to_table(std::slice::from_ref(&dispatched));
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
        assert_eq!(header.len(), row.len());
        assert_eq!(header[4], "dispatch");
        assert_eq!(row[4], "least-work");
        assert!(table.contains("replicas: 4"));
        let csv = to_csv(&[dispatched]);
        let mut lines = csv.lines();
        assert!(lines
            .next()
            .expect("header")
            .ends_with(",dispatch,replicas"));
        assert!(lines.next().expect("row").ends_with(",least-work,4"));
    }

    #[test]
    fn throughput_share_tells_a_runaway_queue_from_a_stable_one() {
        let request = |i: usize, finish_s: f64| crate::server_model::CompletedRequest {
            id: i as u64,
            arrival_s: i as f64,
            finish_s,
            first_token_s: finish_s,
            output_tokens: 1,
            preemptions: 0,
            recomputes: 0,
        };
        // One arrival per second; a stable server finishes each 0.5 s later.
        let stable: Vec<_> = (0..1000).map(|i| request(i, i as f64 + 0.5)).collect();
        assert!((throughput_share(&stable) - 1.0).abs() < 0.01);
        // A server finishing one every 2 s falls behind for good: half the arrival rate.
        let runaway: Vec<_> = (0..1000)
            .map(|i| request(i, 2.0 * i as f64 + 0.5))
            .collect();
        assert!((throughput_share(&runaway) - 0.5).abs() < 0.01);
    }

    #[test]
    fn comparison_picks_the_best_baseline_per_point() {
        let mk = |policy: &str, load: f64, mean: f64| PolicyResult {
            policy: policy.into(),
            workload: "w".into(),
            load: Some(load),
            rate_rps: 1.0,
            predictor: "p".into(),
            completed: 1,
            never_fits: 0,
            mean_latency_s: mean,
            p50_latency_s: mean,
            p90_latency_s: mean,
            p99_latency_s: mean,
            mean_ttft_s: 0.0,
            mean_normalized_latency_s_per_token: 0.0,
            throughput_rps: 1.0,
            throughput_to_arrivals: 1.0,
            preemptions: 0,
            recomputes: 0,
            steps: 1,
            utilization: 1.0,
            dispatch: None,
            replicas: None,
        };
        let results = vec![
            mk("fcfs", 0.5, 4.0),
            mk("srpt", 0.5, 2.0),
            mk("oracle", 0.5, 1.0),
            mk("laps-sd", 0.5, 1.5),
            mk("fcfs", 0.9, 10.0),
            mk("laps-sd", 0.9, 12.0),
        ];
        let c = compare(&results, "laps-sd", &["fcfs", "srpt"], "oracle");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].best_baseline, "srpt");
        assert_eq!(c[0].reduction_vs_best_baseline, 0.25);
        assert_eq!(c[0].ratio_to_oracle, Some(1.5));
        assert_eq!(c[1].best_baseline, "fcfs");
        assert!((c[1].reduction_vs_best_baseline + 0.2).abs() < 1e-12);
        assert_eq!(c[1].ratio_to_oracle, None);
    }
}
