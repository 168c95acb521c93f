//! Synthetic workloads shaped after the LAPS-SD paper's three datasets, and the request list the
//! simulator replays.
//!
//! The paper (arXiv 2505.17074) evaluates on Chatbot Instruction Prompts (Palla, 2023), MBPP
//! (Austin et al., 2021) and Mini Thinky (Nguyen, 2024). None of them is among the datasets the
//! project fetches (ShareGPT is: `scripts/fetch-datasets.sh`), and the paper does not publish
//! its length or acceptance statistics, so every parameter below is an ASSUMPTION, chosen from
//! the nature of each dataset and stated with its reason; docs/scheduling.md lists them. Lengths
//! are in tokens.

use rand::Rng;
use rand_distr::{Beta, Distribution, Exp, LogNormal};
use serde::{Deserialize, Serialize};

use crate::acceptance::DraftLength;
use crate::error::SimError;

/// A distribution of token counts (always >= 1, at most `max`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LengthDist {
    /// `round(exp(N(ln median, sigma)))`, clamped to `[min, max]`.
    LogNormal {
        median: f64,
        sigma: f64,
        min: u32,
        max: u32,
    },
    /// `ceil(Exp(mean))`, at most `max`: geometric, the discrete analogue of exponential sizes.
    Exponential { mean: f64, max: u32 },
    /// With probability `p_first` `ceil(Exp(mean_first))`, else `ceil(Exp(mean_second))`; at most
    /// `max`. A high-variance size distribution (CV > 1) for the queueing-theory checks.
    HyperExponential {
        p_first: f64,
        mean_first: f64,
        mean_second: f64,
        max: u32,
    },
    /// Always the same length.
    Constant(u32),
}

impl LengthDist {
    /// `LogNormal` with its fields in order (median, sigma, min, max): one line per length in
    /// the profile table.
    pub const fn log_normal(median: f64, sigma: f64, min: u32, max: u32) -> Self {
        LengthDist::LogNormal {
            median,
            sigma,
            min,
            max,
        }
    }

    /// Checks the parameters once (so sampling cannot fail).
    pub fn validate(&self, field: &'static str) -> Result<(), SimError> {
        let bad = |reason: String| Err(SimError::InvalidArgument { field, reason });
        match *self {
            LengthDist::LogNormal {
                median,
                sigma,
                min,
                max,
            } => {
                if !(median > 0.0 && median.is_finite() && sigma >= 0.0 && sigma.is_finite()) {
                    return bad(format!("log-normal median {median} / sigma {sigma}"));
                }
                if min == 0 || min > max {
                    return bad(format!("log-normal bounds [{min}, {max}]"));
                }
            }
            LengthDist::Exponential { mean, max } => {
                if !(mean > 0.0 && mean.is_finite()) || max == 0 {
                    return bad(format!("exponential mean {mean} / max {max}"));
                }
            }
            LengthDist::HyperExponential {
                p_first,
                mean_first,
                mean_second,
                max,
            } => {
                let ok = (0.0..=1.0).contains(&p_first)
                    && mean_first > 0.0
                    && mean_second > 0.0
                    && mean_first.is_finite()
                    && mean_second.is_finite()
                    && max > 0;
                if !ok {
                    return bad(format!(
                        "hyper-exponential p {p_first}, means {mean_first}/{mean_second}, max {max}"
                    ));
                }
            }
            LengthDist::Constant(n) => {
                if n == 0 {
                    return bad("constant length 0".into());
                }
            }
        }
        Ok(())
    }

    /// Draws one length. Parameters must have passed [`Self::validate`].
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let ceil_exp = |rng: &mut R, mean: f64, max: u32| -> u32 {
            // Exp::new only fails for a negative or NaN rate, excluded by validate().
            let x = Exp::new(1.0 / mean).map_or(mean, |d| d.sample(rng));
            (x.ceil().max(1.0) as u64).min(u64::from(max)) as u32
        };
        match *self {
            LengthDist::LogNormal {
                median,
                sigma,
                min,
                max,
            } => {
                let x = LogNormal::new(median.ln(), sigma).map_or(median, |d| d.sample(rng));
                (x.round() as u64).clamp(u64::from(min), u64::from(max)) as u32
            }
            LengthDist::Exponential { mean, max } => ceil_exp(rng, mean, max),
            LengthDist::HyperExponential {
                p_first,
                mean_first,
                mean_second,
                max,
            } => {
                let mean = if rng.gen::<f64>() < p_first {
                    mean_first
                } else {
                    mean_second
                };
                ceil_exp(rng, mean, max)
            }
            LengthDist::Constant(n) => n,
        }
    }

    /// Largest length it can produce.
    pub fn max_tokens(&self) -> u32 {
        match *self {
            LengthDist::LogNormal { max, .. }
            | LengthDist::Exponential { max, .. }
            | LengthDist::HyperExponential { max, .. } => max,
            LengthDist::Constant(n) => n,
        }
    }
}

/// Beta(a, b) distribution of a request's latent acceptance probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BetaParams {
    pub a: f64,
    pub b: f64,
}

impl BetaParams {
    pub fn mean(&self) -> f64 {
        self.a / (self.a + self.b)
    }
    pub fn std_dev(&self) -> f64 {
        let s = self.a + self.b;
        (self.a * self.b / (s * s * (s + 1.0))).sqrt()
    }
    pub fn validate(&self) -> Result<(), SimError> {
        if self.a > 0.0 && self.b > 0.0 && self.a.is_finite() && self.b.is_finite() {
            Ok(())
        } else {
            Err(SimError::InvalidArgument {
                field: "acceptance",
                reason: format!("Beta({}, {}) needs positive parameters", self.a, self.b),
            })
        }
    }
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        Beta::new(self.a, self.b).map_or(self.mean(), |d| d.sample(rng))
    }
}

/// The built-in workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Chatbot Instruction Prompts: short chat turns.
    Chatbot,
    /// MBPP: short Python programs from a problem statement and tests; higher acceptance.
    Mbpp,
    /// Mini Thinky: long step-by-step reasoning outputs.
    Thinky,
    /// Heavy-tailed replies: most short, a few very long (output CV^2 ~ 8.5).
    #[value(name = "heavy-tail")]
    #[serde(rename = "heavy-tail")]
    HeavyTail,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 4] = [
        WorkloadKind::Chatbot,
        WorkloadKind::Mbpp,
        WorkloadKind::Thinky,
        WorkloadKind::HeavyTail,
    ];
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadKind::Chatbot => "chatbot",
            WorkloadKind::Mbpp => "mbpp",
            WorkloadKind::Thinky => "thinky",
            WorkloadKind::HeavyTail => "heavy-tail",
        }
    }

    /// The profile of this workload (all parameters are documented assumptions, see the module
    /// header and docs/scheduling.md).
    pub fn profile(&self) -> WorkloadProfile {
        match self {
            // Chat instructions (Alpaca/Dolly-style one-turn prompts): prompts of a sentence or two,
            // answers of a paragraph with a long tail; chat text is moderately predictable for a
            // small draft (acceptance ~0.65, widely spread across requests).
            WorkloadKind::Chatbot => WorkloadProfile {
                name: "chatbot",
                prompt: LengthDist::log_normal(24.0, 0.9, 4, 512),
                output: LengthDist::log_normal(120.0, 0.9, 4, 1024),
                acceptance: BetaParams { a: 6.5, b: 3.5 },
                max_tokens: 1024,
            },
            // MBPP: a one-line task plus three assert tests (~60-130 tokens), a short function as
            // the answer; code is the most draft-friendly text (SD papers report their highest
            // acceptance on code), so acceptance is high and less spread.
            WorkloadKind::Mbpp => WorkloadProfile {
                name: "mbpp",
                prompt: LengthDist::log_normal(90.0, 0.35, 30, 512),
                output: LengthDist::log_normal(110.0, 0.6, 8, 512),
                acceptance: BetaParams { a: 8.0, b: 2.5 },
                max_tokens: 512,
            },
            // Mini Thinky: short questions answered with long "thinking" traces: long, highly
            // variable outputs; reasoning prose is less predictable (acceptance ~0.6, wide).
            WorkloadKind::Thinky => WorkloadProfile {
                name: "thinky",
                prompt: LengthDist::log_normal(60.0, 0.7, 8, 1024),
                output: LengthDist::log_normal(600.0, 0.7, 32, 4096),
                acceptance: BetaParams { a: 5.0, b: 3.2 },
                max_tokens: 4096,
            },
            // Heavy-tailed replies (an assumption, for the regime matrix): chat-like prompts,
            // replies log-normal with sigma 1.5 (CV^2 = e^2.25 - 1 ~ 8.5), where size-based
            // policies gain the most and FCFS suffers most from a long request ahead.
            WorkloadKind::HeavyTail => WorkloadProfile {
                name: "heavy-tail",
                output: LengthDist::log_normal(60.0, 1.5, 2, 8192),
                max_tokens: 8192,
                // Chat prompts and acceptance: only the replies differ.
                ..WorkloadKind::Chatbot.profile()
            },
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything needed to draw requests of one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadProfile {
    pub name: &'static str,
    pub prompt: LengthDist,
    pub output: LengthDist,
    /// Distribution of the per-request latent acceptance probability.
    pub acceptance: BetaParams,
    /// The `max_tokens` a client would send (a cap, not the true length).
    pub max_tokens: u32,
}

impl WorkloadProfile {
    pub fn validate(&self) -> Result<(), SimError> {
        self.prompt.validate("prompt length")?;
        self.output.validate("output length")?;
        self.acceptance.validate()
    }
}

/// A request's size as the simulator knows it (ground truth).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestSize {
    pub prompt_tokens: u32,
    /// True output length: the request stops (EOS) after this many tokens.
    pub output_tokens: u32,
    /// Latent per-token acceptance probability of the draft on this request.
    pub acceptance_rate: f64,
    /// How many tokens the drafter proposes per SD step when it is not always the speculation
    /// length (prompt lookup drafts only what it finds); `None` = always k (a draft model).
    #[serde(default)]
    pub draft_length: Option<DraftLength>,
}

/// One request to replay: ground truth plus what the scheduler is told.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimRequest {
    /// Equals its index in the request list.
    pub id: u64,
    pub arrival_s: f64,
    pub size: RequestSize,
    /// `max_tokens` sent to the scheduler: the workload's cap, the same for every request (so a
    /// policy learns only the bound from it, as on a server), never below the true length.
    pub max_tokens: u32,
    /// Noisy-oracle prediction of the output length (`None` when the online predictor is used).
    pub predicted_output_tokens: Option<u32>,
    /// The length the server predicted from the prompt's text (a served trace's
    /// `predicted_output_tokens`); with the online predictor the request starts with it.
    #[serde(default)]
    pub served_predicted_output_tokens: Option<u32>,
}

/// Draws `count` request sizes from `profile`.
pub fn sample_sizes<R: Rng + ?Sized>(
    profile: &WorkloadProfile,
    count: usize,
    rng: &mut R,
) -> Vec<RequestSize> {
    (0..count)
        .map(|_| RequestSize {
            prompt_tokens: profile.prompt.sample(rng),
            output_tokens: profile.output.sample(rng),
            acceptance_rate: profile.acceptance.sample(rng),
            draft_length: None,
        })
        .collect()
}

/// Draws `count` request sizes by resampling the (prompt, output) `pairs` of a real dataset
/// (uniformly, with replacement; an output of 0 counts as 1), each with an acceptance rate from
/// `acceptance`, drawn right after its pair.
pub fn resample_pairs<R: Rng + ?Sized>(
    pairs: &[(u32, u32)],
    acceptance: &BetaParams,
    count: usize,
    rng: &mut R,
) -> Vec<RequestSize> {
    (0..count)
        .map(|_| {
            let (prompt_tokens, output_tokens) = pairs[rng.gen_range(0..pairs.len())];
            RequestSize {
                prompt_tokens,
                output_tokens: output_tokens.max(1),
                acceptance_rate: acceptance.sample(rng),
                draft_length: None,
            }
        })
        .collect()
}

/// The longest output of `pairs` (at least 1): the one `max_tokens` cap of the requests
/// resampled from them, so the cap tells a policy nothing about a request's length.
pub fn longest_output(pairs: &[(u32, u32)]) -> u32 {
    pairs.iter().map(|p| p.1).max().unwrap_or(1).max(1)
}

/// The `max_tokens` cap for a request of true length `output_tokens`: the workload's cap (a
/// request whose length equals it ends at the cap, as on a server), raised to the true length
/// only where a trace's length exceeds it. Raising it for some requests only, or above the
/// length, would tell a policy that reads `max_tokens` (`gittins`' posterior is bounded by it)
/// those requests' lengths.
pub fn max_tokens_cap(workload_cap: u32, output_tokens: u32) -> u32 {
    workload_cap.max(output_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn profiles_are_valid_and_samples_respect_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for kind in WorkloadKind::ALL {
            let p = kind.profile();
            p.validate().expect("built-in profile is valid");
            for s in sample_sizes(&p, 2000, &mut rng) {
                assert!(s.output_tokens >= 1 && s.output_tokens <= p.output.max_tokens());
                assert!(s.prompt_tokens >= 1 && s.prompt_tokens <= p.prompt.max_tokens());
                assert!((0.0..=1.0).contains(&s.acceptance_rate));
                assert_eq!(max_tokens_cap(p.max_tokens, s.output_tokens), p.max_tokens);
            }
        }
    }

    #[test]
    fn exponential_lengths_have_the_geometric_mean() {
        // ceil(Exp(m)) is geometric with mean 1 / (1 - exp(-1/m)).
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let d = LengthDist::Exponential {
            mean: 20.0,
            max: u32::MAX,
        };
        let n = 200_000;
        let mean = (0..n).map(|_| f64::from(d.sample(&mut rng))).sum::<f64>() / n as f64;
        let expected = 1.0 / (1.0 - (-1.0f64 / 20.0).exp());
        // sd of one draw ~ 20, so the SE of the mean is ~0.045: 0.3 is > 6 SE.
        assert!((mean - expected).abs() < 0.3, "{mean} vs {expected}");
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let d = LengthDist::LogNormal {
            median: -1.0,
            sigma: 0.5,
            min: 1,
            max: 10,
        };
        assert!(matches!(
            d.validate("output length"),
            Err(SimError::InvalidArgument {
                field: "output length",
                ..
            })
        ));
        assert!(BetaParams { a: 0.0, b: 1.0 }.validate().is_err());
    }
}
