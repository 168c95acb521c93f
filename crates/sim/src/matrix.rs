//! The regime matrix (`lapsd sim --matrix DIR`): every policy on the same arrivals over cost
//! profiles x workloads x loads x batch sizes x predictors x acceptance spreads, summarised per
//! policy as the worst and mean ratio of its mean latency to the best non-oracle policy of each
//! regime, its ratio to the oracle, its p99 against FCFS's, and whether it kept up with arrivals.
//! A result counts only when it holds across the matrix, not on one profile of one machine.
//!
//! Writes `DIR/regimes.csv` (one row per regime and policy), `DIR/summary.md` (the tables
//! docs/scheduling.md quotes, with the command that reproduced them) and `DIR/ratio-to-best.png`
//! / `.svg` (each policy's ratios over all regimes, sorted).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lapsd_core::cost::{CostProfile, MeasuredCost};
use lapsd_core::{PolicyKind, PolicySpec, SchedulerConfig, SpeculationMode};

use crate::acceptance::AcceptanceModel;
use crate::error::SimError;
use crate::prediction::PredictorChoice;
use crate::report::PolicyResult;
use crate::rng::stream_rng;
use crate::run::{mean_service_s, ArrivalRate, Experiment, RequestSource};
use crate::trace::TraceRecord;
use crate::workload::{longest_output, resample_pairs, BetaParams, WorkloadKind, WorkloadProfile};
use lapsd_workload::arrivals::{scale_to_rate, ArrivalProcess};

/// The cost profiles shipped in `profiles/`, built into the binary so the matrix runs from any
/// working directory: (name, JSON).
pub const SHIPPED_PROFILES: [(&str, &str); 3] = [
    ("builtin", include_str!("../../../profiles/builtin.json")),
    (
        "cpu-2core",
        include_str!("../../../profiles/cpu-2core-smollm2-ngram.json"),
    ),
    (
        "gpu-a100-7b",
        include_str!("../../../profiles/gpu-a100-7b-shaped.json"),
    ),
];

/// A throughput share below this at load <= [`THROUGHPUT_CHECK_MAX_LOAD`] is flagged.
pub const THROUGHPUT_FLAG: f64 = 0.98;
pub const THROUGHPUT_CHECK_MAX_LOAD: f64 = 0.9;

/// One cost profile of the matrix.
#[derive(Debug, Clone)]
pub struct MatrixProfile {
    pub name: String,
    pub profile: CostProfile,
    /// The profile's batch size (its `max_batch`, else 8).
    pub batch: usize,
}

impl MatrixProfile {
    pub fn from_json(name: &str, text: &str) -> Result<Self, SimError> {
        let profile: CostProfile =
            serde_json::from_str(text).map_err(|e| SimError::CostProfile {
                path: name.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            name: name.to_string(),
            batch: profile.max_batch.unwrap_or(8).max(1),
            profile,
        })
    }

    pub fn shipped() -> Result<Vec<Self>, SimError> {
        SHIPPED_PROFILES
            .iter()
            .map(|(name, text)| Self::from_json(name, text))
            .collect()
    }
}

/// Where a regime's request sizes come from.
#[derive(Debug, Clone)]
pub enum MatrixWorkload {
    Builtin(WorkloadKind),
    /// (prompt, output) token pairs of a real dataset (a `lapsd sim --trace` file, e.g. the
    /// ShareGPT lengths `lapsd bench --dry-run --emit-sim-trace` writes), resampled with
    /// replacement; acceptance from the chatbot profile.
    Lengths {
        name: String,
        pairs: Vec<(u32, u32)>,
    },
}

impl MatrixWorkload {
    pub fn name(&self) -> &str {
        match self {
            MatrixWorkload::Builtin(k) => k.name(),
            MatrixWorkload::Lengths { name, .. } => name,
        }
    }
}

/// Acceptance spread across requests, at the workload's mean acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptanceSpread {
    /// Beta concentration a + b = 40 (rates within ~0.07 of the mean).
    Narrow,
    /// Beta concentration a + b = 2.5 (rates spread over most of [0, 1]).
    Wide,
}

impl AcceptanceSpread {
    pub fn name(&self) -> &'static str {
        match self {
            AcceptanceSpread::Narrow => "narrow",
            AcceptanceSpread::Wide => "wide",
        }
    }
    fn apply(&self, params: BetaParams) -> BetaParams {
        let mean = params.mean();
        let concentration = match self {
            AcceptanceSpread::Narrow => 40.0,
            AcceptanceSpread::Wide => 2.5,
        };
        BetaParams {
            a: mean * concentration,
            b: (1.0 - mean) * concentration,
        }
    }
}

/// The axes of the matrix and how each regime runs.
#[derive(Debug, Clone)]
pub struct MatrixConfig {
    pub profiles: Vec<MatrixProfile>,
    pub workloads: Vec<MatrixWorkload>,
    pub loads: Vec<f64>,
    /// Run each profile at batch 1 as well as at its own batch.
    pub batch_one: bool,
    pub predictors: Vec<PredictorChoice>,
    pub spreads: Vec<AcceptanceSpread>,
    pub policies: Vec<PolicySpec>,
    pub requests: usize,
    pub seed: u64,
    /// Independent runs per regime (seeds `seed`, `seed + 1`, ...), pooled (see
    /// [`pool_replications`]): at loads 0.9-0.95 one 3,000-request run moves by a few percent
    /// with any change to a policy's arithmetic, more than the differences being ranked.
    pub replications: usize,
    pub speculation_length: u32,
    pub jobs: usize,
}

/// One regime's coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Regime {
    pub profile: String,
    pub workload: String,
    pub load: f64,
    pub batch: usize,
    pub predictor: String,
    pub spread: &'static str,
}

/// One policy in one regime.
#[derive(Debug, Clone)]
pub struct RegimeRow {
    pub regime: Regime,
    pub result: PolicyResult,
    /// Mean latency / the best non-oracle policy's in this regime.
    pub ratio_to_best: f64,
    /// Mean latency / the oracle's (NaN without an oracle run).
    pub ratio_to_oracle: f64,
    /// p99 latency / FCFS's (NaN without an FCFS run).
    pub p99_ratio_to_fcfs: f64,
}

/// Per-policy summary over every regime.
#[derive(Debug, Clone)]
pub struct PolicySummary {
    pub policy: String,
    pub worst_ratio_to_best: f64,
    pub worst_regime: Option<Regime>,
    /// Geometric mean of the ratios to the best.
    pub mean_ratio_to_best: f64,
    pub worst_ratio_to_oracle: f64,
    /// Worst ratio to the oracle at batch 1, load 0.8 (NaN if not in the matrix).
    pub worst_ratio_to_oracle_b1_load08: f64,
    pub mean_ratio_to_oracle: f64,
    /// Worst p99 / FCFS's p99 at load 0.9.
    pub worst_p99_ratio_at_09: f64,
    pub mean_p99_ratio: f64,
    pub min_throughput_share: f64,
    /// Regimes at load <= 0.9 where the throughput share fell below [`THROUGHPUT_FLAG`].
    pub throughput_failures: usize,
    /// Regimes in which it was the best non-oracle policy (ties within 0.1% count).
    pub wins: usize,
}

impl MatrixConfig {
    /// Number of regimes.
    pub fn regime_count(&self) -> usize {
        self.profiles.len()
            * self.workloads.len()
            * self.loads.len()
            * if self.batch_one { 2 } else { 1 }
            * self.predictors.len()
            * self.spreads.len()
    }

    /// Every regime's experiments, one per replication.
    fn experiments(&self) -> Result<Vec<(Regime, Vec<Experiment>)>, SimError> {
        let mut out = Vec::new();
        for p in &self.profiles {
            let step_cost = MeasuredCost::from_profile(&p.profile);
            let mut batches = vec![p.batch];
            if self.batch_one && p.batch != 1 {
                batches.insert(0, 1);
            }
            for &batch in &batches {
                let scheduler = SchedulerConfig {
                    capacity: lapsd_core::Capacity {
                        max_batch: batch,
                        max_step_tokens: 8192,
                        kv_budget_tokens: 1 << 22,
                    },
                    speculation_length: self.speculation_length,
                    stability: Default::default(),
                    cost: p.profile.cost,
                };
                for w in &self.workloads {
                    for spread in &self.spreads {
                        for predictor in &self.predictors {
                            for &load in &self.loads {
                                let regime = Regime {
                                    profile: p.name.clone(),
                                    workload: w.name().to_string(),
                                    load,
                                    batch,
                                    predictor: predictor.label(),
                                    spread: spread.name(),
                                };
                                let mut runs = Vec::with_capacity(self.replications);
                                for replication in 0..self.replications.max(1) {
                                    let seed = self.seed + replication as u64;
                                    let (source, rates) =
                                        self.source(w, *spread, load, &scheduler, seed)?;
                                    runs.push(Experiment {
                                        source,
                                        rates,
                                        policies: self.policies.clone(),
                                        scheduler: scheduler.clone(),
                                        predictor: *predictor,
                                        acceptance: AcceptanceModel::default(),
                                        step_cost: step_cost.clone(),
                                        speculation_mode: SpeculationMode::Fixed,
                                        seed,
                                        jobs: self.jobs,
                                    });
                                }
                                out.push((regime, runs));
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn source(
        &self,
        workload: &MatrixWorkload,
        spread: AcceptanceSpread,
        load: f64,
        scheduler: &SchedulerConfig,
        seed: u64,
    ) -> Result<(RequestSource, Vec<ArrivalRate>), SimError> {
        match workload {
            MatrixWorkload::Builtin(kind) => {
                let mut profile = kind.profile();
                profile.acceptance = spread.apply(profile.acceptance);
                Ok((
                    RequestSource::Workload {
                        profile,
                        count: self.requests,
                        arrivals: ArrivalProcess::Poisson,
                    },
                    vec![ArrivalRate::Load(load)],
                ))
            }
            MatrixWorkload::Lengths { pairs, .. } => {
                if pairs.is_empty() {
                    return Err(SimError::EmptyTrace);
                }
                let mut profile: WorkloadProfile = WorkloadKind::Chatbot.profile();
                profile.acceptance = spread.apply(profile.acceptance);
                profile.max_tokens = longest_output(pairs);
                let sizes = resample_pairs(
                    pairs,
                    &profile.acceptance,
                    self.requests,
                    &mut stream_rng(seed, 11),
                );
                // Same load definition as the built-in workloads (run.rs).
                let rate = load / mean_service_s(&sizes, scheduler)?;
                let unit = ArrivalProcess::Poisson
                    .unit_rate_times_s(sizes.len(), &mut stream_rng(seed, 12));
                let times = scale_to_rate(&unit, rate)?;
                let records = sizes
                    .iter()
                    .zip(times)
                    .map(|(s, arrival_s)| TraceRecord {
                        arrival_s,
                        prompt_tokens: s.prompt_tokens,
                        output_tokens: s.output_tokens,
                        acceptance_rate: Some(s.acceptance_rate),
                        draft_length: None,
                        predicted_output_tokens: None,
                    })
                    .collect();
                Ok((
                    RequestSource::Trace { records, profile },
                    vec![ArrivalRate::Trace],
                ))
            }
        }
    }

    /// Runs every regime; `progress` is called with (done, total) after each.
    pub fn run(&self, mut progress: impl FnMut(usize, usize)) -> Result<Vec<RegimeRow>, SimError> {
        let experiments = self.experiments()?;
        let total = experiments.len();
        let mut rows = Vec::new();
        for (i, (regime, runs)) in experiments.into_iter().enumerate() {
            let mut replications = Vec::with_capacity(runs.len());
            for experiment in runs {
                replications.push(experiment.run(None)?);
            }
            rows.extend(rank_regime(&regime, pool_replications(replications)));
            progress(i + 1, total);
        }
        Ok(rows)
    }
}

/// One result per policy from the replications of a regime (each a result per policy, in the
/// same order): latencies, utilisation and percentiles are the mean over replications (for the
/// mean latency, with equal request counts, the mean over every request), counts are summed, and
/// the throughput share is the lowest of any replication (a runaway queue in one is flagged).
fn pool_replications(mut replications: Vec<Vec<PolicyResult>>) -> Vec<PolicyResult> {
    if replications.len() <= 1 {
        return replications.pop().unwrap_or_default();
    }
    let n = replications.len() as f64;
    let mut pooled = replications[0].clone();
    for (i, p) in pooled.iter_mut().enumerate() {
        let all = || replications.iter().filter_map(move |r| r.get(i));
        let avg = |f: fn(&PolicyResult) -> f64| all().map(f).sum::<f64>() / n;
        p.completed = all().map(|r| r.completed).sum();
        p.never_fits = all().map(|r| r.never_fits).sum();
        p.preemptions = all().map(|r| r.preemptions).sum();
        p.recomputes = all().map(|r| r.recomputes).sum();
        p.steps = all().map(|r| r.steps).sum();
        p.rate_rps = avg(|r| r.rate_rps);
        p.mean_latency_s = avg(|r| r.mean_latency_s);
        p.p50_latency_s = avg(|r| r.p50_latency_s);
        p.p90_latency_s = avg(|r| r.p90_latency_s);
        p.p99_latency_s = avg(|r| r.p99_latency_s);
        p.mean_ttft_s = avg(|r| r.mean_ttft_s);
        p.mean_normalized_latency_s_per_token = avg(|r| r.mean_normalized_latency_s_per_token);
        p.throughput_rps = avg(|r| r.throughput_rps);
        p.utilization = avg(|r| r.utilization);
        p.throughput_to_arrivals = all()
            .map(|r| r.throughput_to_arrivals)
            .fold(f64::INFINITY, f64::min);
    }
    pooled
}

/// The rows of one regime, with the ratios filled in.
fn rank_regime(regime: &Regime, results: Vec<PolicyResult>) -> Vec<RegimeRow> {
    let is_oracle = |r: &PolicyResult| r.policy.starts_with(PolicyKind::Oracle.name());
    let best = results
        .iter()
        .filter(|r| !is_oracle(r))
        .map(|r| r.mean_latency_s)
        .fold(f64::INFINITY, f64::min);
    let oracle = results
        .iter()
        .find(|r| is_oracle(r))
        .map_or(f64::NAN, |r| r.mean_latency_s);
    let fcfs_p99 = results
        .iter()
        .find(|r| r.policy == PolicyKind::Fcfs.name())
        .map_or(f64::NAN, |r| r.p99_latency_s);
    results
        .into_iter()
        .map(|result| RegimeRow {
            regime: regime.clone(),
            ratio_to_best: result.mean_latency_s / best,
            ratio_to_oracle: result.mean_latency_s / oracle,
            p99_ratio_to_fcfs: result.p99_latency_s / fcfs_p99,
            result,
        })
        .collect()
}

fn geometric_mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((0.0, 0usize), |(s, n), v| (s + v.ln(), n + 1));
    if n == 0 {
        f64::NAN
    } else {
        (sum / n as f64).exp()
    }
}

fn max_finite(values: impl Iterator<Item = f64>) -> f64 {
    values.filter(|v| v.is_finite()).fold(f64::NAN, f64::max)
}

/// Per-policy summary, in the order the policies first appear.
pub fn summarize_matrix(rows: &[RegimeRow]) -> Vec<PolicySummary> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if !names.contains(&r.result.policy) {
            names.push(r.result.policy.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mine: Vec<&RegimeRow> = rows.iter().filter(|r| r.result.policy == name).collect();
            let worst = mine
                .iter()
                .filter(|r| r.ratio_to_best.is_finite())
                .max_by(|a, b| a.ratio_to_best.total_cmp(&b.ratio_to_best));
            let checked: Vec<&&RegimeRow> = mine
                .iter()
                .filter(|r| r.regime.load <= THROUGHPUT_CHECK_MAX_LOAD + 1e-9)
                .collect();
            PolicySummary {
                policy: name.clone(),
                worst_ratio_to_best: worst.map_or(f64::NAN, |r| r.ratio_to_best),
                worst_regime: worst.map(|r| r.regime.clone()),
                mean_ratio_to_best: geometric_mean(mine.iter().map(|r| r.ratio_to_best)),
                worst_ratio_to_oracle: max_finite(mine.iter().map(|r| r.ratio_to_oracle)),
                worst_ratio_to_oracle_b1_load08: max_finite(
                    mine.iter()
                        .filter(|r| r.regime.batch == 1 && (r.regime.load - 0.8).abs() < 1e-9)
                        .map(|r| r.ratio_to_oracle),
                ),
                mean_ratio_to_oracle: geometric_mean(mine.iter().map(|r| r.ratio_to_oracle)),
                worst_p99_ratio_at_09: max_finite(
                    mine.iter()
                        .filter(|r| (r.regime.load - 0.9).abs() < 1e-9)
                        .map(|r| r.p99_ratio_to_fcfs),
                ),
                mean_p99_ratio: geometric_mean(mine.iter().map(|r| r.p99_ratio_to_fcfs)),
                min_throughput_share: checked
                    .iter()
                    .map(|r| r.result.throughput_to_arrivals)
                    .fold(f64::NAN, f64::min),
                throughput_failures: checked
                    .iter()
                    .filter(|r| r.result.throughput_to_arrivals < THROUGHPUT_FLAG)
                    .count(),
                wins: mine.iter().filter(|r| r.ratio_to_best <= 1.001).count(),
            }
        })
        .collect()
}

/// `regimes.csv`: one row per regime and policy.
pub fn to_csv(rows: &[RegimeRow]) -> String {
    let mut out = String::from(
        "profile,workload,load,batch,predictor,spread,policy,mean_latency_s,p99_latency_s,\
         ratio_to_best,ratio_to_oracle,p99_ratio_to_fcfs,throughput_to_arrivals\n",
    );
    for r in rows {
        let g = &r.regime;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},\"{}\",{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}",
            g.profile,
            g.workload,
            g.load,
            g.batch,
            g.predictor,
            g.spread,
            r.result.policy,
            r.result.mean_latency_s,
            r.result.p99_latency_s,
            r.ratio_to_best,
            r.ratio_to_oracle,
            r.p99_ratio_to_fcfs,
            r.result.throughput_to_arrivals
        );
    }
    out
}

fn describe(regime: &Regime) -> String {
    format!(
        "{} {} load {} batch {} {} {}",
        regime.profile, regime.workload, regime.load, regime.batch, regime.predictor, regime.spread
    )
}

/// The summary table (markdown) with the failing checks flagged.
pub fn to_markdown(summaries: &[PolicySummary], regimes: usize, command: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{regimes} regimes; reproduce with `{command}`.\n");
    out.push_str(
        "| policy | worst / best | mean / best | wins | worst / oracle | worst / oracle (b=1, load 0.8) | mean / oracle | worst p99 / fcfs (load 0.9) | mean p99 / fcfs | min throughput share (load <= 0.9) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in summaries {
        let flag = if s.throughput_failures > 0 {
            format!(
                " **FLAG: below {THROUGHPUT_FLAG} in {} regimes**",
                s.throughput_failures
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3}{} |",
            s.policy,
            s.worst_ratio_to_best,
            s.mean_ratio_to_best,
            s.wins,
            s.worst_ratio_to_oracle,
            s.worst_ratio_to_oracle_b1_load08,
            s.mean_ratio_to_oracle,
            s.worst_p99_ratio_at_09,
            s.mean_p99_ratio,
            s.min_throughput_share,
            flag
        );
    }
    out.push_str("\nWorst regime of each policy (mean latency / best non-oracle):\n\n");
    for s in summaries {
        if let Some(r) = &s.worst_regime {
            let _ = writeln!(
                out,
                "- {}: {:.3} in {}",
                s.policy,
                s.worst_ratio_to_best,
                describe(r)
            );
        }
    }
    out
}

/// Writes `regimes.csv`, `summary.md` and the ratio plot into `dir`; returns the files.
pub fn write_outputs(
    dir: &Path,
    rows: &[RegimeRow],
    regimes: usize,
    command: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let summaries = summarize_matrix(rows);
    let csv = dir.join("regimes.csv");
    std::fs::write(&csv, to_csv(rows))?;
    let md = dir.join("summary.md");
    std::fs::write(&md, to_markdown(&summaries, regimes, command))?;
    let mut files = vec![csv, md];
    files.extend(crate::plot::plot_sorted_ratios(
        dir,
        "ratio-to-best",
        "mean latency / best non-oracle policy, every regime (sorted)",
        &ratio_curves(rows),
    )?);
    Ok(files)
}

/// Each policy's ratios to the best, sorted ascending.
fn ratio_curves(rows: &[RegimeRow]) -> Vec<(String, Vec<f64>)> {
    let mut curves: Vec<(String, Vec<f64>)> = Vec::new();
    for r in rows {
        if !r.ratio_to_best.is_finite() {
            continue;
        }
        match curves.iter_mut().find(|c| c.0 == r.result.policy) {
            Some(c) => c.1.push(r.ratio_to_best),
            None => curves.push((r.result.policy.clone(), vec![r.ratio_to_best])),
        }
    }
    for c in &mut curves {
        c.1.sort_by(f64::total_cmp);
    }
    curves
}

/// Reads (prompt, output) pairs from a `lapsd sim --trace` file.
pub fn read_length_pairs(path: &Path) -> Result<Vec<(u32, u32)>, SimError> {
    let file = std::fs::File::open(path).map_err(|source| SimError::TraceIo {
        path: path.display().to_string(),
        source,
    })?;
    let records = crate::trace::parse_trace(std::io::BufReader::new(file))?;
    Ok(records
        .iter()
        .map(|r| (r.prompt_tokens, r.output_tokens))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapsd_core::PolicyConfig;

    fn tiny(policies: &str) -> MatrixConfig {
        MatrixConfig {
            profiles: MatrixProfile::shipped().expect("shipped profiles parse"),
            workloads: vec![MatrixWorkload::Builtin(WorkloadKind::Mbpp)],
            loads: vec![0.8],
            batch_one: true,
            predictors: vec![PredictorChoice::NoisyOracle { sigma: 0.5 }],
            spreads: vec![AcceptanceSpread::Wide],
            policies: PolicySpec::parse_list(policies, &PolicyConfig::default()).expect("policies"),
            requests: 300,
            seed: 3,
            replications: 1,
            speculation_length: 4,
            jobs: 2,
        }
    }

    #[test]
    fn the_shipped_profiles_parse_with_their_batch_sizes() {
        let profiles = MatrixProfile::shipped().expect("parse");
        assert_eq!(profiles.len(), 3);
        assert!(profiles.iter().all(|p| p.batch >= 1));
        let gpu = profiles
            .iter()
            .find(|p| p.name.starts_with("gpu"))
            .expect("gpu");
        assert!(
            gpu.batch >= 16,
            "a GPU-shaped profile batches: {}",
            gpu.batch
        );
    }

    #[test]
    fn ratios_are_against_the_best_non_oracle_policy_of_each_regime() {
        let m = tiny("fcfs,srpt,oracle,gittins");
        assert_eq!(m.regime_count(), 6);
        let rows = m.run(|_, _| {}).expect("runs");
        assert_eq!(rows.len(), 6 * 4);
        for chunk in rows.chunks(4) {
            let non_oracle_best = chunk
                .iter()
                .filter(|r| r.result.policy != "oracle")
                .map(|r| r.ratio_to_best)
                .fold(f64::INFINITY, f64::min);
            assert!((non_oracle_best - 1.0).abs() < 1e-12);
            let fcfs = chunk
                .iter()
                .find(|r| r.result.policy == "fcfs")
                .expect("fcfs");
            assert!((fcfs.p99_ratio_to_fcfs - 1.0).abs() < 1e-12);
            assert!(chunk.iter().all(|r| r.result.completed == 300));
        }
        let summary = summarize_matrix(&rows);
        assert_eq!(summary.len(), 4);
        let md = to_markdown(&summary, m.regime_count(), "lapsd sim --matrix out");
        assert!(md.contains("| gittins |"), "{md}");
    }

    #[test]
    fn replications_pool_independent_seeds() {
        let run = |seed: u64, replications: usize| {
            let mut m = tiny("fcfs,gittins");
            m.seed = seed;
            m.replications = replications;
            m.run(|_, _| {}).expect("runs")
        };
        let (first, second, pooled) = (run(3, 1), run(4, 1), run(3, 2));
        assert_eq!(pooled.len(), first.len());
        for ((a, b), p) in first.iter().zip(&second).zip(&pooled) {
            assert_eq!(p.result.policy, a.result.policy);
            assert_eq!(p.result.completed, a.result.completed + b.result.completed);
            let mean = 0.5 * (a.result.mean_latency_s + b.result.mean_latency_s);
            assert!((p.result.mean_latency_s - mean).abs() < 1e-9 * mean);
            assert_ne!(
                a.result.mean_latency_s, b.result.mean_latency_s,
                "seeds differ"
            );
            let lowest = a
                .result
                .throughput_to_arrivals
                .min(b.result.throughput_to_arrivals);
            assert_eq!(p.result.throughput_to_arrivals, lowest);
        }
    }
}
