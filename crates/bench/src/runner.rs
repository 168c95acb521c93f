//! The open-loop driver: sends each planned request at its arrival time, whether or not earlier ones
//! have finished (optionally limited by a `--max-concurrency` semaphore, acquired after the arrival
//! time as `vllm bench serve` does), and collects the measured results in plan order.
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{self, ClientConfig, RequestError, RequestErrorKind, RequestResult};
use crate::workload::Plan;

/// How the plan is driven.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub client: ClientConfig,
    /// At most this many requests in flight; `None` = unlimited.
    pub max_concurrency: Option<usize>,
    /// Draw a progress bar on stderr.
    pub show_progress: bool,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// One result per plan item, same order.
    pub results: Vec<RequestResult>,
    /// From the first send to the last completion.
    pub duration_s: f64,
}

/// Sends the whole plan and waits for every request to finish.
pub async fn run_plan(plan: &Plan, http: reqwest::Client, config: &RunConfig) -> RunOutcome {
    let progress = if config.show_progress {
        let bar = ProgressBar::new(plan.items.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}) {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let semaphore = config
        .max_concurrency
        .map(|limit| Arc::new(Semaphore::new(limit.max(1))));
    let client_config = Arc::new(config.client.clone());
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (index, (item, &arrival_s)) in plan.items.iter().zip(&plan.arrivals_s).enumerate() {
        let http = http.clone();
        let client_config = Arc::clone(&client_config);
        let semaphore = semaphore.clone();
        let prompt = item.prompt.clone();
        let max_tokens = item.max_tokens;
        let send_at = tokio::time::Instant::from_std(start) + Duration::from_secs_f64(arrival_s);
        tasks.spawn(async move {
            tokio::time::sleep_until(send_at).await;
            // The semaphore is never closed, so acquiring only fails if it were; treat as no limit.
            let _permit = match &semaphore {
                Some(semaphore) => Arc::clone(semaphore).acquire_owned().await.ok(),
                None => None,
            };
            let result = client::send_request(&http, &client_config, &prompt, max_tokens).await;
            (index, result)
        });
    }
    let mut results = vec![None; plan.items.len()];
    let mut failed = 0usize;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => {
                if result.error.is_some() {
                    failed += 1;
                    progress.set_message(format!("{failed} failed"));
                }
                results[index] = Some(result);
            }
            // A panicking request task is a bug in this crate; record it instead of aborting the run.
            Err(join_error) => tracing::error!(%join_error, "request task failed"),
        }
        progress.inc(1);
    }
    let duration_s = start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| RequestResult {
                error: Some(RequestError {
                    kind: RequestErrorKind::MalformedStream,
                    message: "request task panicked".into(),
                }),
                ..RequestResult::default()
            })
        })
        .collect();
    RunOutcome {
        results,
        duration_s,
    }
}
