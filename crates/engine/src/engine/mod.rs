//! [`SdEngine`]: the speculative-decoding engine the server drives. It owns the target model, the
//! draft method, and one state per sequence (tokens, sampling RNG, target and draft KV caches,
//! acceptance statistics). One [`SdEngine::step`] call advances a batch of sequences by one
//! draft-and-verify step each, every sequence with its own speculation length `k` (LAPS-SD lets
//! the scheduler choose it per request); the step itself lives in [`step`].

use std::collections::HashMap;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::SeedableRng;

use self::step::{Drafter, StepJob};
use crate::error::EngineError;
use crate::model::{KvCache, LoadOptions, Model, ModelInfo, WeightMode};
use crate::spec::sampling::{LogitAdjustments, SamplingMode, TokenLogprob};
use crate::tokenizer::Tokenizer;

pub use crate::spec::draft::DraftSpec;

mod step;

/// Per-request sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 (or less) means greedy decoding.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables top-p.
    pub top_p: f32,
    /// Seed of the request's own RNG (draft sampling and verification draws).
    pub seed: u64,
    /// Most tokens the request may generate; the engine never emits more.
    pub max_tokens: u32,
    /// Extra token ids that end the request, besides the model's EOS ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's EOS ids (benchmarks: exactly `max_tokens` tokens, as
    /// vLLM's `ignore_eos`); `stop_token_ids` still end the request.
    pub ignore_eos: bool,
    /// Logit bias and repetition penalties, applied before temperature and top-p.
    pub logit_adjustments: LogitAdjustments,
    /// Report each emitted token's log probability with this many most likely alternatives
    /// ([`SeqStepOutput::logprobs`]); `None` = off.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            max_tokens: 256,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logit_adjustments: LogitAdjustments::default(),
            logprobs: None,
        }
    }
}

/// What [`SdEngine::load`] needs. No speculation length: every step names each member's `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Target model: a GGUF file or a Hugging Face model folder.
    pub model_path: PathBuf,
    /// Draft method.
    pub draft: DraftSpec,
    /// The target's arithmetic: the file's own weights everywhere, or the faster mix.
    pub weights: WeightMode,
}

/// Why a sequence stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqFinish {
    /// It produced an EOS or stop token (not included in its output).
    Eos,
    /// It reached `max_tokens` (or the model's context length).
    Length,
}

/// What one step did for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqStepOutput {
    /// The sequence id given to [`SdEngine::add_sequence`].
    pub id: u64,
    /// Tokens appended this step, in order: accepted draft tokens then the target's token, cut at
    /// `max_tokens` and before an EOS/stop token (which is never included).
    pub new_tokens: Vec<u32>,
    /// Draft tokens proposed this step (may be below the requested `k`: n-gram misses, the
    /// remaining `max_tokens` budget, the context window).
    pub drafted_tokens: usize,
    /// How many of them the target accepted (before any cut at `max_tokens`/EOS).
    pub accepted_tokens: usize,
    /// Set when the sequence finished in this step (or had finished before).
    pub finished: Option<SeqFinish>,
    /// Whether this step (re)computed the sequence's prompt (+ generated tokens) instead of decoding.
    pub prefilled: bool,
    /// Whether this step computed a chunk of its prefill that stops short of the end (see
    /// [`StepMember::max_prefill_tokens`]): no token yet; a later step continues the prefill.
    pub prefill_pending: bool,
    /// With [`SamplingParams::logprobs`]: one entry per token of `new_tokens`, in order.
    pub logprobs: Vec<TokenLogprob>,
}

/// One member of a [`SdEngine::step_members`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMember {
    /// The sequence id given to [`SdEngine::add_sequence`].
    pub id: u64,
    /// Speculation length this step (0 = plain decoding).
    pub speculation_length: usize,
    /// For a sequence whose KV is not resident: most prompt (+ generated) tokens to prefill
    /// this step. When fewer are missing the prefill completes and yields the next token as
    /// usual; otherwise the step appends this chunk to its KV and yields nothing, and the next
    /// step that names it continues where the chunk ended (chunked prefill: a long prompt no
    /// longer holds the engine for one long step). `None` = the whole prefill.
    pub max_prefill_tokens: Option<usize>,
}

/// Acceptance statistics of one sequence, over its SD steps (steps run with `k > 0`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeqStats {
    /// Steps run with a requested `k > 0` (even if the drafter proposed nothing).
    pub sd_steps: u64,
    /// Draft tokens proposed, in total.
    pub drafted_tokens: u64,
    /// Draft tokens accepted, in total.
    pub accepted_tokens: u64,
    /// `accepted_per_position[i]`: SD steps that accepted the draft token at position `i`.
    pub accepted_per_position: Vec<u64>,
    /// Tokens produced per SD step, accepted drafts plus the target's own:
    /// `(accepted_tokens + sd_steps) / sd_steps` (0 before the first SD step).
    pub mean_accepted_length: f64,
}

impl SeqStats {
    /// Accepted / drafted, `None` before any draft token.
    pub fn acceptance_rate(&self) -> Option<f64> {
        (self.drafted_tokens > 0).then(|| self.accepted_tokens as f64 / self.drafted_tokens as f64)
    }

    /// Records one step that asked for `k_requested` drafts, got `drafted`, accepted `accepted`.
    pub(crate) fn record(&mut self, k_requested: usize, drafted: usize, accepted: usize) {
        if k_requested == 0 {
            return;
        }
        self.sd_steps += 1;
        self.drafted_tokens += drafted as u64;
        self.accepted_tokens += accepted as u64;
        if self.accepted_per_position.len() < accepted {
            self.accepted_per_position.resize(accepted, 0);
        }
        for slot in &mut self.accepted_per_position[..accepted] {
            *slot += 1;
        }
        self.mean_accepted_length =
            (self.accepted_tokens + self.sd_steps) as f64 / self.sd_steps as f64;
    }
}

/// One sequence's state inside the engine.
pub(crate) struct SeqState {
    /// Prompt followed by every generated token.
    pub(crate) tokens: Vec<u32>,
    /// Length of the prompt within `tokens`.
    pub(crate) prompt_len: usize,
    pub(crate) params: SamplingParams,
    pub(crate) mode: SamplingMode,
    pub(crate) rng: StdRng,
    /// Target KV; when resident it holds every token but the last (whose logits come next).
    pub(crate) target_cache: KvCache,
    /// Draft KV (model drafters only); lags the target and catches up at the next SD step.
    pub(crate) draft_cache: Option<KvCache>,
    /// False for a new sequence or after [`SdEngine::free_kv`]: the next step prefills it.
    pub(crate) resident: bool,
    pub(crate) finished: Option<SeqFinish>,
    pub(crate) stats: SeqStats,
}

impl SeqState {
    /// Tokens generated so far.
    pub(crate) fn generated_tokens(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// The speculative-decoding engine: a target model, a draft method, and per-sequence state.
pub struct SdEngine {
    target: Model,
    tokenizer: Tokenizer,
    drafter: Drafter,
    config: EngineConfig,
    seqs: HashMap<u64, SeqState>,
}

impl SdEngine {
    /// Loads the target model and its tokenizer, and the draft model if the spec names one (its
    /// vocabulary must match the target's).
    pub fn load(config: EngineConfig) -> Result<Self, EngineError> {
        let (target, tokenizer) = Model::load_with_tokenizer_options(
            &config.model_path,
            &LoadOptions::for_weights(config.weights),
        )?;
        target.warm_up()?;
        let drafter = Drafter::new(&config.draft, &target)?;
        Ok(Self {
            target,
            tokenizer,
            drafter,
            config,
            seqs: HashMap::new(),
        })
    }

    /// The target's tokenizer (shared by the draft model).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Facts about the target model.
    pub fn info(&self) -> &ModelInfo {
        self.target.info()
    }

    /// The configuration the engine was loaded with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Registers a sequence; its prompt is prefilled by the next [`SdEngine::step`] that names it.
    pub fn add_sequence(
        &mut self,
        id: u64,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(), EngineError> {
        if self.seqs.contains_key(&id) {
            // TODO(model helper): a dedicated `EngineError::DuplicateSequence(u64)` variant.
            return Err(EngineError::CacheMismatch(format!(
                "sequence {id} already exists"
            )));
        }
        if prompt_ids.is_empty() {
            return Err(EngineError::EmptySequence { index: 0 });
        }
        let info = self.target.info();
        if let Some(&token_id) = prompt_ids.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(EngineError::TokenOutOfRange {
                token_id,
                vocab_size: info.vocab_size,
            });
        }
        if prompt_ids.len() >= info.context_length {
            return Err(EngineError::ContextOverflow {
                cached_tokens: 0,
                new_tokens: prompt_ids.len(),
                context_length: info.context_length,
            });
        }
        let state = SeqState {
            prompt_len: prompt_ids.len(),
            tokens: prompt_ids,
            mode: SamplingMode::new(params.temperature, params.top_p),
            rng: StdRng::seed_from_u64(params.seed),
            params,
            target_cache: self.target.new_cache(),
            draft_cache: self.drafter.new_cache(&self.target),
            resident: false,
            finished: None,
            stats: SeqStats::default(),
        };
        self.seqs.insert(id, state);
        Ok(())
    }

    /// One batched step. Each entry `(id, k)`: `k` = speculation length for that sequence this
    /// step, 0 = plain decoding. A sequence whose KV is not resident (new, or freed) is
    /// (re)prefilled in this call (prompt + tokens generated so far) and yields its next token;
    /// prefills can be mixed with decode steps. All target forwards of the step go in one
    /// `forward_batch` call; draft-model forwards are batched per draft position. Outputs come in
    /// the order of `batch`. On error no sequence advances.
    pub fn step(&mut self, batch: &[(u64, usize)]) -> Result<Vec<SeqStepOutput>, EngineError> {
        let members: Vec<StepMember> = batch
            .iter()
            .map(|&(id, k)| StepMember {
                id,
                speculation_length: k,
                max_prefill_tokens: None,
            })
            .collect();
        self.step_members(&members)
    }

    /// [`SdEngine::step`] with a prefill limit per member ([`StepMember::max_prefill_tokens`]).
    pub fn step_members(
        &mut self,
        batch: &[StepMember],
    ) -> Result<Vec<SeqStepOutput>, EngineError> {
        for (i, &StepMember { id, .. }) in batch.iter().enumerate() {
            if !self.seqs.contains_key(&id) {
                return Err(EngineError::UnknownSequence(id));
            }
            if batch[..i].iter().any(|other| other.id == id) {
                // TODO(model helper): a dedicated `EngineError::InvalidRequest(String)` variant.
                return Err(EngineError::CacheMismatch(format!(
                    "sequence {id} appears twice in one step"
                )));
            }
        }
        // Take the batch's states out of the map so each can be borrowed mutably on its own.
        let mut taken: Vec<(u64, SeqState)> = batch
            .iter()
            .filter_map(|m| self.seqs.remove(&m.id).map(|s| (m.id, s)))
            .collect();
        let result = {
            let mut jobs: Vec<StepJob<'_>> = taken
                .iter_mut()
                .zip(batch)
                .map(|((id, seq), m)| {
                    StepJob::new(*id, seq, m.speculation_length, m.max_prefill_tokens)
                })
                .collect();
            step::run(&self.target, &self.drafter, &mut jobs)
        };
        for (id, seq) in taken {
            self.seqs.insert(id, seq);
        }
        result
    }

    /// Drops a sequence's KV caches (target and draft) to free memory, e.g. when the scheduler
    /// preempts it beyond the KV budget; the next step that names it recomputes them.
    pub fn free_kv(&mut self, id: u64) -> Result<(), EngineError> {
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id))?;
        seq.target_cache.clear();
        if let Some(cache) = seq.draft_cache.as_mut() {
            cache.clear();
        }
        seq.resident = false;
        Ok(())
    }

    /// Forgets a sequence (finished or cancelled). Unknown ids are ignored.
    pub fn remove(&mut self, id: u64) {
        self.seqs.remove(&id);
    }

    /// Positions held in the sequence's target KV cache (0 when freed, finished or unknown).
    pub fn kv_tokens(&self, id: u64) -> usize {
        self.seqs.get(&id).map_or(0, |s| s.target_cache.len())
    }

    /// The sequence's acceptance statistics so far.
    pub fn stats(&self, id: u64) -> Option<SeqStats> {
        self.seqs.get(&id).map(|s| s.stats.clone())
    }

    /// Tokens the sequence has generated so far (without the prompt).
    pub fn generated(&self, id: u64) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| &s.tokens[s.prompt_len..])
    }

    /// Number of sequences the engine holds.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether the engine holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}
