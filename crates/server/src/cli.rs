//! `lapsd serve` flags ([`ServeArgs`]) and [`run`]: builds the tokio runtime, loads the model on
//! the engine worker thread, serves until SIGTERM / Ctrl-C, exits 0 after a graceful drain.
//! anyhow is used here only (command glue).

use std::path::PathBuf;

use anyhow::Context;
use lapsd_core::length_model::TextLengthModel;
use lapsd_core::policy::args::PolicyArgs;
use lapsd_core::{Capacity, LinearCost, PolicyConfig, PolicySpec, SpeculationMode};
use lapsd_engine::spec::DEFAULT_DRAFT;
use lapsd_engine::WeightMode;

use crate::edge::{
    ApiKeys, HttpConfig, DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES,
};
use crate::server::{start, ServerConfig};

/// Default model file: the embedded SmolLM2-135M-Instruct (fetched by `scripts/fetch-models.sh`
/// into `models/`), looked for where [`default_model_candidates`] says.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Environment variable with API keys (comma-separated), added to `--api-key`.
pub const API_KEY_ENV: &str = "LAPSD_API_KEY";

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Target model: a GGUF file or a Hugging Face folder (config.json, tokenizer.json,
    /// *.safetensors). Default: $LAPSD_MODEL, else the embedded SmolLM2-135M-Instruct
    /// found in $LAPSD_MODEL_DIR, else in models/ beside the executable or up to two levels
    /// above it (target/release/lapsd in a checkout), else in ./models.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Draft method: none, ngram[:N], self:N (first N target layers), a draft .gguf path or
    /// model:PATH (a GGUF file or Hugging Face folder), optionally with :vocab=N (the draft scores
    /// only the first N token ids) and/or :exact.
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: String,
    /// Target arithmetic: `fast` (Q5_0/Q5_1/Q8_1 projections re-quantized to Q8_0 at load,
    /// prompts of 16+ tokens through an f32 copy of the weights candle's kernels serve; for
    /// Q8_0/Q4_1/Q4_K/Q6_K files the same as `exact`) or `exact` (the file's own
    /// quantized weights for every position). Measured: docs/speculative-decoding.md, "Exact or
    /// fast weights".
    #[arg(long, default_value = "fast")]
    pub weights: WeightMode,
    /// Scheduling policy: gittins (default: the Gittins index of each request's posterior
    /// remaining time, the policy that wins the simulator's regime matrix, docs/scheduling.md),
    /// laps-sd (the paper's), fcfs, sjf, srpt, las, mlfq or trail. Settings (aging, batch
    /// formation, LAPS-SD's knobs) are the flags below, the same as `lapsd sim`'s, or in
    /// brackets as in `lapsd sim --policy`: `laps-sd[las-phase=false]`. `oracle` exists only in
    /// the simulator.
    #[arg(long, default_value = "gittins")]
    pub policy: String,
    /// Draft tokens per SD step (k); 0 = plain decoding. With --speculation-mode auto, the
    /// longest draft a request may take.
    #[arg(long, default_value_t = 4)]
    pub speculation_length: u32,
    /// `fixed`: every request drafts --speculation-length tokens per step. `auto`: each request's
    /// k is chosen every step, up to --speculation-length, from its acceptance so far and the
    /// cost profile, for the most tokens per second of step time (0 for requests whose drafts
    /// are rejected; give it the cost profile of the machine it serves on). Experimental:
    /// measured in the simulator and served on one CPU core per server, where no draft paid and
    /// it drafted nothing (docs/speculative-decoding.md).
    #[arg(long, value_enum, default_value = "fixed")]
    pub speculation_mode: SpeculationMode,
    /// Most requests in one step.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Most tokens processed in one step (prefill tokens plus k+1 per decoding request).
    #[arg(long, default_value_t = 2048)]
    pub max_step_tokens: u64,
    /// KV memory budget in tokens over all resident requests (beyond it preempted requests lose
    /// their KV and recompute it on resume).
    #[arg(long, default_value_t = 16384)]
    pub kv_budget_tokens: u64,
    /// Most requests in the server at once (waiting, running or preempted); the next gets 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Name clients use in `model`; default: the model file stem (e.g. SmolLM2-135M-Instruct.Q4_1)
    /// or the model folder's name.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// API key every /v1/* request must send as `Authorization: Bearer KEY` (repeatable; keys
    /// in $LAPSD_API_KEY, comma-separated, are added). Without any key, no authentication.
    /// /health and /metrics stay open.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Host names the Host header may carry (comma-separated, any port; `*` = any). Default:
    /// localhost, 127.0.0.1 and ::1 when bound to a loopback address (a guard against DNS
    /// rebinding), any host otherwise. Others get 403.
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    pub allowed_hosts: Option<Vec<String>>,
    /// Origin allowed to call the API from a browser (repeatable; `*` = any). Without it no
    /// CORS headers are sent, so browsers refuse cross-origin calls.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Seconds a client has to send a request's headers; idle keep-alive connections are
    /// closed after as long.
    #[arg(long, default_value_t = DEFAULT_HEADER_TIMEOUT_S)]
    pub header_timeout_s: f64,
    /// Seconds a client has to send a request's body (408 past it).
    #[arg(long, default_value_t = DEFAULT_BODY_TIMEOUT_S)]
    pub body_timeout_s: f64,
    /// Most characters a prompt may have (completions: the prompt text; chat: all message
    /// contents together); longer ones get a 400 before they are tokenized. Off by default.
    #[arg(long, value_name = "N")]
    pub max_prompt_chars: Option<usize>,
    /// Also export the load gauges under another server's metric names, for routers and
    /// autoscalers that read only those: `vllm` adds `vllm:num_requests_waiting`,
    /// `vllm:num_requests_running` and `vllm:kv_cache_usage_perc` (a fraction in [0, 1], as
    /// vLLM's), labelled with `model_name`. The `lapsd_` names are always exported.
    #[arg(long, value_enum, value_name = "SERVER")]
    pub metrics_compat: Option<MetricsCompat>,
    /// Policy settings, shared with `lapsd sim`. The server turns two bounds on by default:
    /// --fcfs-slack 3, a tail bound (p99 latency within about 3x what FCFS would give the same
    /// requests, measured on a shadow FCFS queue; in the simulator's regime matrix it cuts the
    /// worst p99 against FCFS from 5.9x to 3.5x at load 0.9 for about 1% of the mean up to load 0.8
    /// and 7% at 0.9; --fcfs-slack 1.5 for a tighter tail, 0 for none), and --max-wait-factor
    /// 100, a safety net against starvation under overload (a request that has not run for 100x
    /// the recent mean latency is served first; 0 turns it off, --max-wait-s adds a fixed
    /// bound). Why: docs/scheduling.md.
    #[command(flatten)]
    pub policy_settings: PolicyArgs,
    /// Cost profile written by `lapsd calibrate` (step costs LAPS-SD uses to estimate remaining
    /// time); default: a rough built-in profile of SmolLM2-135M on 2 CPU cores.
    #[arg(long)]
    pub cost_profile: Option<PathBuf>,
    /// Length predictions ignore `max_tokens` (by default a prediction is capped at it). For
    /// benchmarks that send `ignore_eos` with `max_tokens` set to each request's target length:
    /// without this flag, `max_tokens` would tell srpt/trail/laps-sd the true length.
    #[arg(long)]
    pub predictions_ignore_max_tokens: bool,
    /// On SIGTERM/Ctrl-C, seconds in-flight requests may still run before they are cancelled.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_timeout_s: f64,
    /// Append one JSON line per engine step (members, verified positions, prefill tokens,
    /// duration) to this file: the in-situ measurement `lapsd calibrate --from-step-log` fits.
    #[arg(long)]
    pub step_log: Option<PathBuf>,
    /// Predict each request's output length from its prompt text with this model (written by
    /// `lapsd bench train-length-model`) instead of from its prompt length alone. Requests that
    /// outgrow the prediction fall back to the online predictor's conditional median.
    #[arg(long)]
    pub length_model: Option<PathBuf>,
}

/// Metric names `/metrics` can export besides lapsd's own.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsCompat {
    /// vLLM's load gauges (what the Gateway API Inference Extension's endpoint picker reads).
    Vllm,
}

/// Where the embedded default model is looked for, in order: `$LAPSD_MODEL_DIR`, then `models/`
/// beside the executable and one and two levels above it (an installed `bin/lapsd` with
/// `models/` next to `bin/`; `target/release/lapsd` in a checkout), then `./models`. So
/// `lapsd serve` finds the model whatever the working directory.
pub fn default_model_candidates(
    model_dir_env: Option<PathBuf>,
    exe: Option<PathBuf>,
) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = model_dir_env.into_iter().collect();
    if let Some(exe_dir) = exe.as_deref().and_then(std::path::Path::parent) {
        dirs.extend(exe_dir.ancestors().take(3).map(|dir| dir.join("models")));
    }
    dirs.push(PathBuf::from("models"));
    dirs.into_iter()
        .map(|d| d.join(DEFAULT_MODEL_FILE))
        .collect()
}

/// The model path: the flag, else $LAPSD_MODEL, else the first default candidate that exists;
/// an error listing the candidates when none does.
pub fn resolve_model_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag.or_else(|| std::env::var_os("LAPSD_MODEL").map(PathBuf::from)) {
        if !path.exists() {
            anyhow::bail!("model {} not found", path.display());
        }
        return Ok(path);
    }
    let candidates = default_model_candidates(
        std::env::var_os("LAPSD_MODEL_DIR").map(PathBuf::from),
        std::env::current_exe().ok(),
    );
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            anyhow::anyhow!(
                "model file {DEFAULT_MODEL_FILE} not found (looked in: {}): run scripts/fetch-models.sh, or pass --model, or set LAPSD_MODEL or LAPSD_MODEL_DIR",
                tried.join(", ")
            )
        })
}

impl ServeArgs {
    /// The HTTP edge settings; `env_keys` is the value of $LAPSD_API_KEY, if set.
    pub fn http_config(&self, env_keys: Option<&str>) -> HttpConfig {
        HttpConfig {
            api_keys: ApiKeys::new(self.api_keys.iter().map(String::as_str).chain(env_keys)),
            allowed_hosts: self.allowed_hosts.clone(),
            cors_origins: self.cors_origins.clone(),
            header_timeout_s: self.header_timeout_s,
            body_timeout_s: self.body_timeout_s,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_prompt_chars: self.max_prompt_chars,
            metrics_compat_vllm: self.metrics_compat == Some(MetricsCompat::Vllm),
        }
    }

    /// The server configuration these flags describe.
    pub fn to_config(&self) -> anyhow::Result<ServerConfig> {
        let base = self
            .policy_settings
            .policy_config(PolicyConfig::server_default())?;
        let PolicySpec {
            kind: policy,
            config: policy_config,
        } = PolicySpec::parse(&self.policy, &base)?;
        let stability = self.policy_settings.stability()?;
        let cost = match &self.cost_profile {
            // Fixed for the server's lifetime: the step log (`--step-log`) is fitted offline by
            // `lapsd calibrate --from-step-log`, not fed back while serving.
            None => LinearCost::BUILT_IN,
            Some(path) => {
                read_json_flag::<lapsd_core::cost::CostProfile>("--cost-profile", path)?.cost
            }
        };
        let length_model = match &self.length_model {
            None => None,
            Some(path) => Some(std::sync::Arc::new(load_length_model(path)?)),
        };
        Ok(ServerConfig {
            host: self.host.clone(),
            port: self.port,
            policy,
            policy_config,
            stability,
            capacity: Capacity {
                max_batch: self.max_batch,
                max_step_tokens: self.max_step_tokens,
                kv_budget_tokens: self.kv_budget_tokens,
            },
            speculation_length: self.speculation_length,
            speculation_mode: self.speculation_mode,
            max_queue: self.max_queue,
            cost,
            predictor_prior_tokens: 128,
            predictor_window: 256,
            max_tokens_bounds_prediction: !self.predictions_ignore_max_tokens,
            shutdown_timeout_s: self.shutdown_timeout_s,
            step_log: self.step_log.clone(),
            length_model,
            http: self.http_config(std::env::var(API_KEY_ENV).ok().as_deref()),
        })
    }
}

/// Reads the JSON file a flag names; errors say `reading`/`parsing FLAG PATH`.
fn read_json_flag<T: serde::de::DeserializeOwned>(
    flag: &str,
    path: &std::path::Path,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {flag} {}", path.display()))
}

/// Reads a `--length-model` file and checks it is whole.
pub fn load_length_model(path: &std::path::Path) -> anyhow::Result<TextLengthModel> {
    let model: TextLengthModel = read_json_flag("--length-model", path)?;
    if !model.is_consistent() {
        anyhow::bail!(
            "--length-model {}: {} weights for {} hash buckets, or non-finite values, or an empty length range",
            path.display(),
            model.weights.len(),
            model.hash_buckets
        );
    }
    Ok(model)
}

/// `lapsd serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let model_path = resolve_model_path(args.model.clone())?;
    if config.http.api_keys.is_empty() && !is_loopback_host(&config.host) {
        tracing::warn!(
            host = %config.host,
            "serving on a non-loopback address without --api-key: anyone who can reach it can use it"
        );
    }
    let draft = args
        .draft
        .parse()
        .with_context(|| format!("--draft {}", args.draft))?;
    let loader = crate::sd_backend::loader(crate::sd_backend::LoadSpec {
        model_path,
        draft,
        weights: args.weights,
        served_model_name: args.served_model_name.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        let handle = start(config, loader, shutdown_then_arm_force_exit()).await?;
        eprintln!("lapsd serve: listening on http://{}", handle.local_addr);
        handle.wait().await?;
        Ok(())
    })
}

/// Whether `host` (the bind address) is a loopback address or `localhost`.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Exit status after a second shutdown signal (128 + SIGINT, the shell's convention).
const FORCED_EXIT_STATUS: i32 = 130;

/// Resolves on the first Ctrl-C or SIGTERM (the graceful drain starts) after arming the
/// second: an operator who signals again does not want to wait for the drain, so the process
/// exits at once.
async fn shutdown_then_arm_force_exit() {
    shutdown_signal().await;
    eprintln!("lapsd serve: shutting down, draining in-flight requests (signal again to exit now)");
    tokio::spawn(async {
        shutdown_signal().await;
        eprintln!("lapsd serve: second signal, exiting without draining");
        std::process::exit(FORCED_EXIT_STATUS);
    });
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use lapsd_core::PolicyKind;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn defaults_run_gittins_with_aging_and_bind_loopback() {
        let cli = Cli::parse_from(["lapsd"]);
        let config = cli.serve.to_config().expect("valid defaults");
        assert_eq!(config.policy, PolicyKind::Gittins);
        assert_eq!(config.policy, PolicyKind::SERVER_DEFAULT);
        assert_eq!(config.policy_config.max_wait_factor, Some(100.0));
        assert_eq!(config.policy_config.fcfs_slack, Some(3.0));
        assert_eq!(config.policy_config.max_wait_s, None);
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 8000);
    }

    #[test]
    fn the_default_draft_is_the_spec_ngram_always_meant() {
        let cli = Cli::parse_from(["lapsd"]);
        let default = cli.serve.draft.parse::<lapsd_engine::spec::DraftSpec>();
        assert_eq!(default, "ngram".parse());
    }

    #[test]
    fn max_wait_zero_turns_aging_off_and_unknown_policy_fails() {
        let cli = Cli::parse_from(["lapsd", "--max-wait-factor", "0", "--fcfs-slack", "0"]);
        let config = cli.serve.to_config().expect("valid");
        assert_eq!(config.policy_config.max_wait_factor, None);
        assert_eq!(config.policy_config.fcfs_slack, None);
        let cli = Cli::parse_from(["lapsd", "--fcfs-slack", "0.5"]);
        let err = cli
            .serve
            .to_config()
            .expect_err("a slack below 1 is no bound");
        assert!(err.to_string().contains("fcfs_slack"), "{err}");
        let cli = Cli::parse_from([
            "lapsd",
            "--policy",
            "laps-sd",
            "--tokens-per-step",
            "mean-accepted-length",
            "--batch-formation",
            "marginal",
        ]);
        let config = cli.serve.to_config().expect("valid");
        assert_eq!(config.policy, PolicyKind::LapsSd);
        assert_eq!(
            config.policy_config.tokens_per_step,
            lapsd_core::TokensPerStep::MeanAcceptedLength
        );
        assert_eq!(config.policy_config.max_wait_factor, Some(100.0));
        let cli = Cli::parse_from(["lapsd", "--policy", "laps-sd-mal"]);
        let err = cli.serve.to_config().expect_err("variant names are gone");
        assert!(err.to_string().contains("laps-sd-mal"), "{err}");
        let cli = Cli::parse_from(["lapsd", "--policy", "laps-sd[las-phase=false]"]);
        let config = cli.serve.to_config().expect("valid");
        assert!(!config.policy_config.las_phase);
        let cli = Cli::parse_from(["lapsd", "--max-wait-s=-1"]);
        let err = cli.serve.to_config().expect_err("negative wait");
        assert!(err.to_string().contains("max_wait_s"), "{err}");
        let cli = Cli::parse_from(["lapsd", "--policy", "fcfs"]);
        assert_eq!(
            cli.serve.to_config().expect("valid").policy,
            PolicyKind::Fcfs
        );
        let cli = Cli::parse_from(["lapsd", "--policy", "lottery"]);
        let err = cli.serve.to_config().expect_err("unknown policy");
        assert!(err.to_string().contains("lottery"), "{err}");
    }

    #[test]
    fn api_keys_come_from_flags_and_env_and_edge_flags_parse() {
        let cli = Cli::parse_from([
            "lapsd",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--allowed-hosts",
            "a.example,b.example",
            "--cors-origin",
            "http://ui.example",
            "--header-timeout-s",
            "2.5",
        ]);
        let http = cli.serve.http_config(Some("k3,k4,"));
        assert_eq!(http.api_keys, ApiKeys::new(["k1", "k2", "k3", "k4"]));
        assert!(http.api_keys.accepts("k4") && !http.api_keys.accepts(""));
        assert_eq!(
            http.allowed_hosts,
            Some(vec!["a.example".to_string(), "b.example".to_string()])
        );
        assert_eq!(http.cors_origins, vec!["http://ui.example".to_string()]);
        assert_eq!(http.header_timeout_s, 2.5);
        assert_eq!(http.body_timeout_s, DEFAULT_BODY_TIMEOUT_S);
        let defaults = Cli::parse_from(["lapsd"]).serve.http_config(None);
        assert!(defaults.api_keys.is_empty());
        assert_eq!(defaults.allowed_hosts, None);
        assert!(defaults.cors_origins.is_empty());
    }

    #[test]
    fn default_model_is_looked_for_beside_the_executable_not_only_in_the_cwd() {
        let candidates = default_model_candidates(
            Some(PathBuf::from("/opt/models")),
            Some(PathBuf::from("/repo/target/release/lapsd")),
        );
        let expected: Vec<PathBuf> = [
            "/opt/models",
            "/repo/target/release/models",
            "/repo/target/models",
            "/repo/models",
            "models",
        ]
        .iter()
        .map(|d| PathBuf::from(d).join(DEFAULT_MODEL_FILE))
        .collect();
        assert_eq!(candidates, expected);
        assert!(is_loopback_host("127.0.0.1") && is_loopback_host("::1"));
        assert!(is_loopback_host("localhost") && !is_loopback_host("0.0.0.0"));
    }

    #[test]
    fn length_model_loads_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.json");
        let mut model = TextLengthModel::zeros(8);
        model.bias = 3.0;
        std::fs::write(&good, serde_json::to_vec(&model).expect("json")).expect("write");
        let cli = Cli::parse_from(["lapsd", "--length-model", good.to_str().expect("utf-8")]);
        let config = cli.serve.to_config().expect("valid");
        assert_eq!(config.length_model.as_deref(), Some(&model));
        model.weights.truncate(3);
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, serde_json::to_vec(&model).expect("json")).expect("write");
        let cli = Cli::parse_from(["lapsd", "--length-model", broken.to_str().expect("utf-8")]);
        let err = cli.serve.to_config().expect_err("3 weights for 8 buckets");
        assert!(err.to_string().contains("broken.json"), "{err}");
        let cli = Cli::parse_from(["lapsd", "--length-model", "/nonexistent/model.json"]);
        let err = format!("{:#}", cli.serve.to_config().expect_err("missing file"));
        assert!(
            err.contains("--length-model /nonexistent/model.json"),
            "{err}"
        );
    }
}
