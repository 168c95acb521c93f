//! The policy flags `lapsd sim` and `lapsd serve` share (one clap group, so a flag means the same
//! in both): the settings of [`PolicyConfig`] and LAPS-SD's stability test. Behind the `cli`
//! feature so the core stays free of clap for library users.

use super::laps_sd::PerceptiblePlacement;
use super::{BatchFormation, PolicyConfig, SizePosterior, TokensPerStep};
use crate::error::CoreError;
use crate::request::StabilityRule;

#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct PolicyArgs {
    /// Starvation bound for any policy: a request that has not run for this many seconds is
    /// served first until it finishes; 0 = off (default: off).
    #[arg(long, value_name = "SECONDS")]
    pub max_wait_s: Option<f64>,
    /// Relative starvation bound for any policy: a request that has not run for this many times
    /// the mean latency of recently finished requests is served first; 0 = off (default: off in
    /// `sim`; see `lapsd serve --help` for the server's).
    #[arg(long, value_name = "FACTOR")]
    pub max_wait_factor: Option<f64>,
    /// Tail bound for any policy: keep p99 latency within about this many times the p99 FCFS
    /// would give the same requests (measured by replaying arrivals through a shadow FCFS queue
    /// with the measured service times); while more than 0.5% of recent requests exceed the
    /// bound, the oldest request past it is served first, for at most one p99 service time;
    /// 0 = off (default: off in `sim`; see `lapsd serve --help` for the server's).
    #[arg(long, value_name = "SLACK")]
    pub fcfs_slack: Option<f64>,
    /// Batch formation for any policy: `full` fills every step; `marginal` lets a short queue run
    /// a smaller batch when the cost model says co-batching raises total latency (full again from
    /// --marginal-full-at-queue requests on, so throughput is never lost).
    #[arg(long, value_enum)]
    pub batch_formation: Option<BatchFormation>,
    /// Marginal formation applies only below this many requests in the system (default 16).
    #[arg(long)]
    pub marginal_full_at_queue: Option<usize>,
    /// MLFQ / LAPS-SD: number of priority queues (default 4).
    #[arg(long)]
    pub num_queues: Option<usize>,
    /// MLFQ / LAPS-SD: first queue's attained-service threshold in target passes, doubling per
    /// level (default 16).
    #[arg(long)]
    pub first_threshold_passes: Option<u64>,
    /// TRAIL: no preemption past this fraction of the predicted length (default 0.5).
    #[arg(long)]
    pub trail_no_preempt_fraction: Option<f64>,
    /// LAPS-SD: where perceptible requests rank (default within-queue).
    #[arg(long, value_enum)]
    pub perceptible_placement: Option<PerceptiblePlacement>,
    /// LAPS-SD: tokens per step from the acceptance rate (the paper) or the mean accepted length.
    #[arg(long, value_enum)]
    pub tokens_per_step: Option<TokensPerStep>,
    /// LAPS-SD: `false` drops the least-attained-service phase and ranks every request by its
    /// estimated remaining time (with the prefill owed) from arrival.
    #[arg(long)]
    pub las_phase: Option<bool>,
    /// Gittins: output-length posterior, `empirical` (the finished requests of the same
    /// prediction bucket, as observed; default) or `log-normal` (one learnt spread for all).
    #[arg(long, value_enum)]
    pub size_posterior: Option<SizePosterior>,
    /// LAPS-SD stability test: minimum SD steps before a request can become perceptible (8).
    #[arg(long)]
    pub stable_min_steps: Option<u32>,
    /// LAPS-SD stability test: window of steps over which the rate must stay within epsilon (4).
    #[arg(long)]
    pub stable_window: Option<u32>,
    /// LAPS-SD stability test: largest allowed movement of the acceptance rate in the window
    /// (0.05).
    #[arg(long)]
    pub stable_epsilon: Option<f64>,
}

impl PolicyArgs {
    /// The settings on top of `base` (the command's own defaults), validated.
    pub fn policy_config(&self, base: PolicyConfig) -> Result<PolicyConfig, CoreError> {
        let mut c = base;
        if let Some(w) = self.max_wait_s {
            if !(w.is_finite() && w >= 0.0) {
                return Err(CoreError::InvalidConfig {
                    field: "max_wait_s",
                    reason: format!("must be a finite number >= 0, got {w}"),
                });
            }
            c.max_wait_s = (w > 0.0).then_some(w);
        }
        if let Some(f) = self.max_wait_factor {
            if !(f.is_finite() && f >= 0.0) {
                return Err(CoreError::InvalidConfig {
                    field: "max_wait_factor",
                    reason: format!("must be a finite number >= 0, got {f}"),
                });
            }
            c.max_wait_factor = (f > 0.0).then_some(f);
        }
        if let Some(s) = self.fcfs_slack {
            if !(s.is_finite() && (s == 0.0 || s >= 1.0)) {
                return Err(CoreError::InvalidConfig {
                    field: "fcfs_slack",
                    reason: format!("must be 0 (off) or a finite number >= 1, got {s}"),
                });
            }
            c.fcfs_slack = (s > 0.0).then_some(s);
        }
        if let Some(v) = self.batch_formation {
            c.batch_formation = v;
        }
        if let Some(v) = self.marginal_full_at_queue {
            c.marginal_full_at_queue = v;
        }
        if let Some(v) = self.num_queues {
            c.num_queues = v;
        }
        if let Some(v) = self.first_threshold_passes {
            c.first_threshold_passes = v;
        }
        if let Some(v) = self.trail_no_preempt_fraction {
            c.trail_no_preempt_fraction = v;
        }
        if let Some(v) = self.perceptible_placement {
            c.perceptible_placement = v;
        }
        if let Some(v) = self.tokens_per_step {
            c.tokens_per_step = v;
        }
        if let Some(v) = self.las_phase {
            c.las_phase = v;
        }
        if let Some(v) = self.size_posterior {
            c.size_posterior = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// LAPS-SD's stability test with these flags over the defaults.
    pub fn stability(&self) -> Result<StabilityRule, CoreError> {
        let d = StabilityRule::default();
        let rule = StabilityRule {
            min_steps: self.stable_min_steps.unwrap_or(d.min_steps),
            window: self.stable_window.unwrap_or(d.window),
            epsilon: self.stable_epsilon.unwrap_or(d.epsilon),
        };
        if !(rule.epsilon.is_finite() && rule.epsilon >= 0.0) {
            return Err(CoreError::InvalidConfig {
                field: "stable_epsilon",
                reason: format!("must be a finite number >= 0, got {}", rule.epsilon),
            });
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    #[test]
    fn flags_override_the_commands_defaults_and_bad_values_are_named() {
        let cli = Cli::parse_from([
            "x",
            "--batch-formation",
            "marginal",
            "--las-phase",
            "false",
            "--max-wait-s",
            "0",
        ]);
        let base = PolicyConfig {
            max_wait_s: Some(30.0),
            ..PolicyConfig::default()
        };
        let c = cli.policy.policy_config(base.clone()).expect("valid");
        assert_eq!(c.batch_formation, BatchFormation::Marginal);
        assert!(!c.las_phase);
        assert_eq!(c.max_wait_s, None, "0 turns the server's default off");
        let keep = Cli::parse_from(["x"])
            .policy
            .policy_config(base)
            .expect("valid");
        assert_eq!(keep.max_wait_s, Some(30.0));
        let bad = Cli::parse_from(["x", "--num-queues", "0"]).policy;
        assert!(matches!(
            bad.policy_config(PolicyConfig::default()),
            Err(CoreError::InvalidConfig {
                field: "num_queues",
                ..
            })
        ));
    }
}
