//! Starting and stopping the server: spawn the engine worker thread (it loads the model, so model
//! work never touches the async runtime), build the router, serve until the shutdown signal, then
//! drain: stop accepting, let in-flight requests finish for up to `shutdown_timeout_s`, cancel
//! what is left, wait for the worker to exit.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapsd_core::{
    policy::build_policy, Capacity, LinearCost, OnlineQuantilePredictor, PolicyConfig, PolicyKind,
    Scheduler, SchedulerConfig, SpeculationMode, StabilityRule,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::backend::Backend;
use crate::edge::{EdgeState, HostPolicy, HttpConfig};
use crate::engine_worker::{EngineWorker, StepLog, WorkerContext};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::model_text::{ModelCard, ModelText};
use crate::routes::{router, AppState};
use crate::validation::Validator;
use lapsd_core::length_model::TextLengthModel;

/// Seconds past the drain timeout after which shutdown stops waiting for admitted requests.
const DRAIN_BACKSTOP_S: u64 = 10;

/// Everything `lapsd serve` is configured with (built from the CLI flags, or by tests).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    pub policy: PolicyKind,
    pub policy_config: PolicyConfig,
    /// LAPS-SD's perceptibility test.
    pub stability: StabilityRule,
    pub capacity: Capacity,
    /// Draft tokens per SD step (k); 0 = plain decoding. With `speculation_mode` auto, the
    /// longest draft a request may take.
    pub speculation_length: u32,
    /// Fixed k for every request, or chosen per request and step (`--speculation-mode`).
    pub speculation_mode: SpeculationMode,
    /// Most requests in the server at once (waiting, running or preempted); more get 429.
    pub max_queue: usize,
    /// Step costs LAPS-SD uses to estimate remaining execution time.
    pub cost: LinearCost,
    /// Output-length prior of the online predictor before it has observed any request (tokens).
    pub predictor_prior_tokens: u32,
    /// Finished requests the online predictor remembers per prompt-length bucket.
    pub predictor_window: usize,
    /// Whether length-aware policies may bound a request's predicted length by its `max_tokens`
    /// (true for real traffic; benchmarks that send `ignore_eos` with `max_tokens` = the target
    /// length turn it off, or `max_tokens` would hand those policies the true length).
    pub max_tokens_bounds_prediction: bool,
    /// On shutdown, how long in-flight requests may run before they are cancelled.
    pub shutdown_timeout_s: f64,
    /// Where to append one [`lapsd_core::StepObservation`] JSON line per engine step.
    pub step_log: Option<PathBuf>,
    /// Predicts output lengths from prompt text at admission (`--length-model`).
    pub length_model: Option<Arc<TextLengthModel>>,
    /// The HTTP edge: API keys, allowed hosts, CORS, timeouts, body limit.
    pub http: HttpConfig,
}

/// A loaded model: the engine (owned by the worker thread) and what handlers need.
pub struct LoadedModel {
    pub backend: Box<dyn Backend>,
    pub text: Arc<dyn ModelText>,
    pub card: ModelCard,
    /// The draft method, for `lapsd_policy_info`.
    pub draft_name: String,
}

/// Loads the model; runs on the engine worker thread.
pub type ModelLoader = Box<dyn FnOnce() -> Result<LoadedModel, ServerError> + Send>;

/// A started server.
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// Triggers a graceful shutdown and waits for it to complete.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server stops on its own (its shutdown signal fired).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.map_err(ServerError::ServerTask)?
    }
}

fn check_config(config: &ServerConfig) -> Result<(), ServerError> {
    if config.policy == PolicyKind::Oracle {
        return Err(ServerError::InvalidSetting(
            "policy `oracle` needs the true output length and exists only in `lapsd sim`".into(),
        ));
    }
    if config.max_queue == 0 {
        return Err(ServerError::InvalidSetting(
            "--max-queue must be at least 1".into(),
        ));
    }
    if config.capacity.max_batch == 0 {
        return Err(ServerError::InvalidSetting(
            "--max-batch must be at least 1".into(),
        ));
    }
    if !(config.shutdown_timeout_s.is_finite() && config.shutdown_timeout_s >= 0.0) {
        return Err(ServerError::InvalidSetting(format!(
            "--shutdown-timeout-s must be a finite number of seconds >= 0, got {}",
            config.shutdown_timeout_s
        )));
    }
    config.http.check()
}

/// Loads the model (on the worker thread), binds, and serves until `shutdown` resolves or the
/// returned handle's `shutdown` is called. Returns once the server accepts connections.
pub async fn start(
    config: ServerConfig,
    loader: ModelLoader,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServerHandle, ServerError> {
    check_config(&config)?;
    let start = Instant::now();
    let metrics = Arc::new(Metrics::new()?);
    let cancel_all = Arc::new(AtomicBool::new(false));
    let (commands_tx, commands_rx) = mpsc::channel(config.max_queue);
    let (ready_tx, ready_rx) = oneshot::channel();
    let worker = {
        let config = config.clone();
        let metrics = metrics.clone();
        let cancel_all = cancel_all.clone();
        std::thread::Builder::new()
            .name("engine_worker".into())
            .spawn(move || {
                worker_main(
                    config,
                    loader,
                    metrics,
                    cancel_all,
                    start,
                    commands_rx,
                    ready_tx,
                )
            })?
    };
    let (text, card) = match ready_rx.await {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => {
            let _ = worker.join();
            return Err(e);
        }
        Err(_) => {
            let _ = worker.join();
            return Err(ServerError::WorkerDiedLoading);
        }
    };
    let addr = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local_addr = listener.local_addr()?;
    let shutting_down = Arc::new(AtomicBool::new(false));
    let admission = Arc::new(Semaphore::new(config.max_queue));
    let edge = EdgeState {
        api_keys: Arc::new(config.http.api_keys.clone()),
        hosts: HostPolicy::resolve(config.http.allowed_hosts.as_deref(), local_addr.ip()),
        shutting_down: shutting_down.clone(),
        max_body_bytes: config.http.max_body_bytes,
        metrics: metrics.clone(),
    };
    let state = AppState {
        validator: Validator {
            card,
            text,
            kv_budget_tokens: config.capacity.kv_budget_tokens,
            lookahead_tokens: config.speculation_length + 1,
            length_model: config.length_model.clone(),
            max_prompt_chars: config.http.max_prompt_chars,
        },
        commands_tx,
        admission: admission.clone(),
        max_queue: config.max_queue,
        metrics,
        shutting_down: shutting_down.clone(),
        created_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        start,
        next_response_id: Arc::new(AtomicU64::new(1)),
        metrics_compat_vllm: config.http.metrics_compat_vllm,
    };
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let drain_timeout = Duration::from_secs_f64(config.shutdown_timeout_s.max(0.0));
    let signal = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = shutdown_rx => {}
        }
        tracing::info!("shutdown: no longer accepting; draining in-flight requests");
        shutting_down.store(true, Ordering::Release);
        let cancel_all = cancel_all.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain_timeout).await;
            tracing::warn!("shutdown: drain timeout passed, cancelling what is left");
            cancel_all.store(true, Ordering::Release);
        });
    };
    // Every admission permit back means nothing is in flight: the worker has finished or
    // cancelled (after the drain timeout) every request. The backstop covers a worker that
    // died holding permits.
    let max_queue = u32::try_from(config.max_queue).unwrap_or(u32::MAX);
    let backstop = drain_timeout + Duration::from_secs(DRAIN_BACKSTOP_S);
    let drained = async move {
        if tokio::time::timeout(backstop, admission.acquire_many(max_queue))
            .await
            .is_err()
        {
            tracing::warn!("shutdown: requests still admitted after the drain; closing anyway");
        }
    };
    tracing::info!(%local_addr, hosts = ?edge.hosts, api_keys = edge.api_keys.len(), "lapsd serve listening");
    let app = router(state, edge, &config.http)?;
    let header_timeout = config.http.header_timeout();
    let task = tokio::spawn(async move {
        crate::listener::serve(listener, app, header_timeout, signal, drained).await;
        // Every connection (and with it every command sender) is gone: the worker finishes
        // what it holds and exits.
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .map_err(ServerError::WorkerJoin)?
            .map_err(|_| ServerError::WorkerPanicked)?;
        tracing::info!("lapsd serve stopped");
        Ok(())
    });
    Ok(ServerHandle {
        local_addr,
        shutdown_tx: Some(shutdown_tx),
        task,
    })
}

type Ready = Result<(Arc<dyn ModelText>, ModelCard), ServerError>;

/// Body of the engine worker thread: load, build the scheduler, report readiness, run.
fn worker_main(
    config: ServerConfig,
    loader: ModelLoader,
    metrics: Arc<Metrics>,
    cancel_all: Arc<AtomicBool>,
    start: Instant,
    commands_rx: mpsc::Receiver<crate::engine_worker::WorkerCommand>,
    ready_tx: oneshot::Sender<Ready>,
) {
    let built = build_policy(config.policy, &config.policy_config)
        .map_err(ServerError::Policy)
        .and_then(|policy| Ok((policy, loader()?)));
    let (policy, loaded) = match built {
        Ok(v) => v,
        Err(e) => {
            let _ = ready_tx.send(Err(e));
            return;
        }
    };
    let scheduler = Scheduler::new(
        SchedulerConfig {
            capacity: config.capacity,
            speculation_length: config.speculation_length,
            stability: config.stability,
            cost: config.cost,
        },
        policy,
    )
    .with_predictor(Box::new(OnlineQuantilePredictor::new(
        config.predictor_prior_tokens,
        config.predictor_window,
    )))
    .with_speculation_mode(config.speculation_mode);
    metrics
        .kv_budget_tokens
        .set(config.capacity.kv_budget_tokens as i64);
    metrics
        .policy_info
        .with_label_values(&[config.policy.name(), &loaded.draft_name])
        .set(1.0);
    let step_log = match config.step_log.as_deref().map(StepLog::create).transpose() {
        Ok(log) => log,
        Err(e) => {
            let _ = ready_tx.send(Err(e));
            return;
        }
    };
    let ctx = WorkerContext {
        text: loaded.text.clone(),
        metrics,
        eos_token_ids: loaded.card.eos_token_ids.clone(),
        max_tokens_bounds_prediction: config.max_tokens_bounds_prediction,
        step_log,
        policy_config: config.policy_config.clone(),
        cancel_all,
        start,
    };
    if ready_tx.send(Ok((loaded.text, loaded.card))).is_err() {
        return;
    }
    EngineWorker::new(loaded.backend, scheduler, ctx, commands_rx).run();
}
