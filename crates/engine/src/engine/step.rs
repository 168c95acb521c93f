//! One batched draft-and-verify step over several sequences (Leviathan et al. 2023, Algorithm 1,
//! batched): plan each sequence's effective `k`, let the drafter propose (model drafters batched
//! per draft position), verify every sequence's `k + 1` positions — and the prefills of new or
//! freed sequences — in ONE target `forward_batch`, then accept, roll both KV caches back to the
//! accepted length, and apply EOS / `max_tokens`.
//!
//! KV invariant of a resident sequence: the target cache holds every token but the last one; the
//! draft cache holds a prefix of that (it lags after plain-decoding steps and catches up in the
//! first draft forward of the next SD step, which therefore also serves as the draft's prefill).

use candle_core::Tensor;
use rand::rngs::StdRng;

use super::{SeqFinish, SeqState, SeqStepOutput};
use crate::error::EngineError;
use crate::model::{KvCache, Model, SeqForward};
use crate::spec::draft::{load_draft_model, ngram_propose, DraftSpec};
use crate::spec::sampling::{sample, verify_greedy, verify_sampled, DraftProbs, TokenLogprob};

/// The draft method of an engine, built from a [`DraftSpec`].
pub(crate) enum Drafter {
    /// Plain decoding only.
    None,
    /// Prompt lookup with suffixes of at most `n` tokens.
    NGram { n: usize },
    /// The target's first `n_layers` layers (own KV cache per sequence).
    SelfLayers { n_layers: usize },
    /// A separate draft model with the target's vocabulary.
    Model(Box<Model>),
}

impl Drafter {
    /// Builds the drafter; loads and checks a separate draft model.
    pub(crate) fn new(spec: &DraftSpec, target: &Model) -> Result<Self, EngineError> {
        let n_target_layers = target.info().n_layers;
        Ok(match spec {
            DraftSpec::None => Drafter::None,
            DraftSpec::NGram { n } => Drafter::NGram { n: (*n).max(1) },
            DraftSpec::SelfLayers { n_layers } => {
                if *n_layers == 0 || *n_layers > n_target_layers {
                    return Err(EngineError::InvalidLayerCount {
                        requested: *n_layers,
                        available: n_target_layers,
                    });
                }
                Drafter::SelfLayers {
                    n_layers: *n_layers,
                }
            }
            DraftSpec::Model {
                path,
                head_rows,
                pad_q8_0,
            } => {
                let draft = load_draft_model(path, *head_rows, *pad_q8_0)?;
                let (dv, tv) = (draft.info().vocab_size, target.info().vocab_size);
                if dv != tv {
                    return Err(EngineError::InvalidModel(format!(
                        "draft model {} has vocabulary size {dv} but the target has {tv}; \
                         a draft model must share the target's tokenizer",
                        path.display()
                    )));
                }
                Drafter::Model(Box::new(draft))
            }
        })
    }

    /// An empty draft KV cache for a new sequence (model drafters only).
    pub(crate) fn new_cache(&self, target: &Model) -> Option<KvCache> {
        match self {
            Drafter::SelfLayers { n_layers } => Some(target.new_cache_layers(*n_layers)),
            Drafter::Model(draft) => Some(draft.new_cache()),
            Drafter::None | Drafter::NGram { .. } => None,
        }
    }

    /// Most positions the drafter can hold.
    fn context_length(&self, target: &Model) -> usize {
        match self {
            Drafter::Model(draft) => draft
                .info()
                .context_length
                .min(target.info().context_length),
            _ => target.info().context_length,
        }
    }
}

/// One sequence's part in a step.
pub(crate) struct StepJob<'a> {
    id: u64,
    seq: &'a mut SeqState,
    /// `k` as the caller asked.
    k_requested: usize,
    /// `k` after the budget and context clamps; 0 for prefills and skipped sequences.
    k: usize,
    /// The sequence does not run this step (already finished, or finished before running).
    skip: bool,
    /// The step recomputes the sequence's KV (new or freed).
    prefill: bool,
    /// Most prefill tokens this step may compute (`None` = all that are missing).
    prefill_limit: Option<usize>,
    /// The prefill stops short of the last token this step (a chunk): KV only, no token.
    partial: bool,
    drafts: Vec<u32>,
    draft_probs: Vec<DraftProbs>,
    /// For rollback on error: the draft cache length and RNG before the step.
    draft_len_before: usize,
    rng_before: StdRng,
}

impl<'a> StepJob<'a> {
    pub(crate) fn new(
        id: u64,
        seq: &'a mut SeqState,
        k_requested: usize,
        prefill_limit: Option<usize>,
    ) -> Self {
        let draft_len_before = seq.draft_cache.as_ref().map_or(0, KvCache::len);
        let rng_before = seq.rng.clone();
        Self {
            id,
            seq,
            k_requested,
            k: 0,
            skip: false,
            prefill: false,
            prefill_limit,
            partial: false,
            drafts: Vec::new(),
            draft_probs: Vec::new(),
            draft_len_before,
            rng_before,
        }
    }

    /// Decides whether the sequence runs, whether it prefills, and its effective `k`.
    fn plan(&mut self, draft_context_length: usize, target_context_length: usize) {
        let seq = &mut *self.seq;
        if seq.finished.is_none() && seq.generated_tokens() >= seq.params.max_tokens as usize {
            seq.finished = Some(SeqFinish::Length);
        }
        if seq.finished.is_some() {
            self.skip = true;
            return;
        }
        self.prefill = !seq.resident;
        if self.prefill {
            let missing = seq.tokens.len() - seq.target_cache.len();
            self.partial = self.prefill_limit.is_some_and(|limit| limit < missing);
            // Chunks of one prefill must put each position through the weights the whole
            // prefill would have used.
            seq.target_cache.plan_dense_prefix(missing);
            return;
        }
        let n = seq.tokens.len();
        // Never draft more than the budget can take: a step emits at most k + 1 tokens.
        let budget = seq.params.max_tokens as usize - seq.generated_tokens();
        // Verification writes positions n-1 ..= n-1+k; the draft cache ends at n-2+k.
        let target_room = target_context_length.saturating_sub(n);
        let draft_room = (draft_context_length + 1).saturating_sub(n);
        self.k = self
            .k_requested
            .min(budget - 1)
            .min(target_room)
            .min(draft_room);
    }

    /// Appends one draft token picked from the draft's logits for the next position.
    /// `logits` may cover fewer ids than the vocabulary (a draft head cut by
    /// `LoadOptions::lm_head_rows`): `verify_sampled` reads the ids beyond as probability 0.
    fn push_model_draft(&mut self, logits: &[f32]) {
        let mode = self.seq.mode;
        // The draft proposes from the adjusted distribution too (any q keeps verification exact;
        // this one is closer to the target's p, so more drafts are accepted).
        let adjusted;
        let adjust = &self.seq.params.logit_adjustments;
        let logits = if adjust.is_neutral() {
            logits
        } else {
            let mut counts = adjust.counts(&self.seq.tokens, self.seq.prompt_len);
            self.drafts.iter().for_each(|&d| counts.push(d));
            let mut row = logits.to_vec();
            adjust.apply(&mut row, &counts);
            adjusted = row;
            &adjusted
        };
        if mode.is_greedy() {
            self.drafts.push(crate::spec::sampling::argmax(logits));
            self.draft_probs.push(DraftProbs::OneHot);
        } else {
            let q = mode.probs(logits);
            self.drafts.push(sample(&q, &mut self.seq.rng));
            self.draft_probs.push(DraftProbs::Dense(q));
        }
    }

    fn rollback(&mut self) {
        if let Some(cache) = self.seq.draft_cache.as_mut() {
            cache.truncate(self.draft_len_before);
        }
        self.seq.rng = self.rng_before.clone();
    }
}

/// Runs one step for `jobs`; see the module docs. On error every job is rolled back.
pub(crate) fn run(
    target: &Model,
    drafter: &Drafter,
    jobs: &mut [StepJob<'_>],
) -> Result<Vec<SeqStepOutput>, EngineError> {
    let _span = tracing::debug_span!("sd_step", batch = jobs.len()).entered();
    let target_ctx = target.info().context_length;
    let draft_ctx = drafter.context_length(target);
    for job in jobs.iter_mut() {
        job.plan(draft_ctx, target_ctx);
    }
    let result = draft(target, drafter, jobs)
        .and_then(|()| verify_forward(target, jobs))
        .and_then(|logits| commit(target, jobs, logits));
    if result.is_err() {
        jobs.iter_mut().for_each(StepJob::rollback);
    }
    result
}

/// Draft phase: fills each decoding job's `drafts` (up to its `k`).
fn draft(target: &Model, drafter: &Drafter, jobs: &mut [StepJob<'_>]) -> Result<(), EngineError> {
    let _span = tracing::debug_span!("draft").entered();
    match drafter {
        Drafter::None => {
            jobs.iter_mut().for_each(|j| j.k = 0);
            Ok(())
        }
        Drafter::NGram { n } => {
            for job in jobs.iter_mut().filter(|j| j.k > 0) {
                job.drafts = ngram_propose(&job.seq.tokens, *n, job.k);
                job.draft_probs = vec![DraftProbs::OneHot; job.drafts.len()];
            }
            Ok(())
        }
        Drafter::SelfLayers { n_layers } => draft_with_model(target, *n_layers, jobs),
        Drafter::Model(model) => draft_with_model(model, model.info().n_layers, jobs),
    }
}

/// Autoregressive drafting with a model: one batched forward per draft position over the jobs
/// that still draft. Position 0 feeds each job's catch-up tokens (all not yet in its draft cache).
fn draft_with_model(
    model: &Model,
    n_layers: usize,
    jobs: &mut [StepJob<'_>],
) -> Result<(), EngineError> {
    let max_k = jobs.iter().map(|j| j.k).max().unwrap_or(0);
    for pos in 0..max_k {
        let mut active: Vec<&mut StepJob<'_>> = jobs.iter_mut().filter(|j| j.k > pos).collect();
        let inputs: Vec<Vec<u32>> = active
            .iter()
            .map(|j| match j.drafts.last() {
                Some(&last) if pos > 0 => vec![last],
                _ => {
                    let cached = j.seq.draft_cache.as_ref().map_or(0, KvCache::len);
                    j.seq.tokens[cached..].to_vec()
                }
            })
            .collect();
        let logits = {
            let mut fwd = Vec::with_capacity(active.len());
            for (job, input) in active.iter_mut().zip(&inputs) {
                let id = job.id;
                let cache = job.seq.draft_cache.as_mut().ok_or_else(|| {
                    EngineError::CacheMismatch(format!("sequence {id} has no draft cache"))
                })?;
                cache.follow_dense_prefix(&job.seq.target_cache);
                fwd.push(SeqForward {
                    tokens: input,
                    cache,
                });
            }
            model.forward_batch_layers(&mut fwd, n_layers)?
        };
        for (job, rows) in active.iter_mut().zip(&logits) {
            job.push_model_draft(&last_row(rows)?);
        }
    }
    Ok(())
}

/// The one target forward of the step: prefills (everything not cached) and verifications
/// (the pending token plus the drafts). Returns one logits tensor per job (`None` if skipped).
fn verify_forward(
    target: &Model,
    jobs: &mut [StepJob<'_>],
) -> Result<Vec<Option<Tensor>>, EngineError> {
    let _span = tracing::debug_span!("verify").entered();
    let inputs: Vec<Option<Vec<u32>>> = jobs
        .iter()
        .map(|j| {
            (!j.skip).then(|| {
                let start = j.seq.target_cache.len();
                let end = match (j.prefill, j.prefill_limit) {
                    (true, Some(limit)) => (start + limit.max(1)).min(j.seq.tokens.len()),
                    _ => j.seq.tokens.len(),
                };
                let mut input = j.seq.tokens[start..end].to_vec();
                input.extend_from_slice(&j.drafts);
                input
            })
        })
        .collect();
    // A prefill reads its last position's logits only; a verification reads all k + 1.
    let logit_rows: Vec<usize> = jobs
        .iter()
        .zip(&inputs)
        .filter_map(|(j, input)| input.as_ref().map(|i| if j.prefill { 1 } else { i.len() }))
        .collect();
    let mut fwd: Vec<SeqForward<'_>> = jobs
        .iter_mut()
        .zip(&inputs)
        .filter_map(|(j, input)| {
            input.as_ref().map(|tokens| SeqForward {
                tokens,
                cache: &mut j.seq.target_cache,
            })
        })
        .collect();
    let n_layers = target.info().n_layers;
    let mut logits = target
        .forward_batch_tails(&mut fwd, n_layers, &logit_rows)?
        .into_iter();
    drop(fwd);
    Ok(inputs
        .iter()
        .map(|input| input.as_ref().and_then(|_| logits.next()))
        .collect())
}

/// Acceptance, KV rollback, stop conditions and statistics, per job.
fn commit(
    target: &Model,
    jobs: &mut [StepJob<'_>],
    logits: Vec<Option<Tensor>>,
) -> Result<Vec<SeqStepOutput>, EngineError> {
    // Convert every job's rows first so that a tensor error leaves no job half-committed.
    let mut rows_per_job = Vec::with_capacity(jobs.len());
    for (job, logits) in jobs.iter().zip(logits) {
        rows_per_job.push(match logits {
            Some(_) if job.partial => None,
            Some(t) => {
                let n_rows = t.dim(0)?;
                let needed = job.drafts.len() + 1;
                Some(t.narrow(0, n_rows - needed, needed)?.to_vec2::<f32>()?)
            }
            None => None,
        });
    }
    let info = target.info();
    let mut outputs = Vec::with_capacity(jobs.len());
    for (job, rows) in jobs.iter_mut().zip(rows_per_job) {
        let Some(mut rows) = rows else {
            // Skipped, or a prefill chunk: its KV is kept (the next step continues after it),
            // no token is produced and the sequence stays non-resident until its last chunk.
            outputs.push(SeqStepOutput {
                id: job.id,
                new_tokens: Vec::new(),
                drafted_tokens: 0,
                accepted_tokens: 0,
                finished: job.seq.finished,
                prefilled: false,
                prefill_pending: job.partial,
                logprobs: Vec::new(),
            });
            continue;
        };
        let seq = &mut *job.seq;
        let adjust = &seq.params.logit_adjustments;
        // Logprobs are the target's raw ones: keep the rows the adjustments are about to change.
        let raw_rows =
            (seq.params.logprobs.is_some() && !adjust.is_neutral()).then(|| rows.clone());
        if !adjust.is_neutral() {
            // Row i verifies the position after i drafts: count those drafts as generated.
            let mut counts = adjust.counts(&seq.tokens, seq.prompt_len);
            for (i, row) in rows.iter_mut().enumerate() {
                adjust.apply(row, &counts);
                if let Some(&drafted) = job.drafts.get(i) {
                    counts.push(drafted);
                }
            }
        }
        let verdict = if seq.mode.is_greedy() {
            verify_greedy(&job.drafts, &rows)
        } else {
            let probs: Vec<Vec<f32>> = rows.iter().map(|r| seq.mode.probs(r)).collect();
            verify_sampled(&job.drafts, &job.draft_probs, &probs, &mut seq.rng)
        };
        let mut emitted: Vec<u32> = job.drafts[..verdict.accepted].to_vec();
        emitted.push(verdict.next_token);
        let budget = seq.params.max_tokens as usize - seq.generated_tokens();
        let is_stop = |t: &u32| {
            (!seq.params.ignore_eos && info.eos_token_ids.contains(t))
                || seq.params.stop_token_ids.contains(t)
        };
        let mut finished = None;
        if let Some(pos) = emitted.iter().position(is_stop) {
            if pos < budget {
                emitted.truncate(pos);
                finished = Some(SeqFinish::Eos);
            }
        }
        if finished.is_none() && emitted.len() >= budget {
            emitted.truncate(budget);
            finished = Some(SeqFinish::Length);
        }
        // Keep the KV of every accepted token; the emitted last token is pending.
        let n_before = seq.tokens.len();
        seq.target_cache.truncate(n_before + verdict.accepted);
        if let Some(cache) = seq.draft_cache.as_mut() {
            cache.truncate(n_before + verdict.accepted);
        }
        // Emitted token i came from row i (accepted drafts, then the target's own token).
        let logprobs = match seq.params.logprobs {
            Some(top) => {
                let rows = raw_rows.as_ref().unwrap_or(&rows);
                emitted
                    .iter()
                    .zip(rows)
                    .map(|(&token, row)| TokenLogprob::from_logits(row, token, top))
                    .collect()
            }
            None => Vec::new(),
        };
        seq.tokens.extend_from_slice(&emitted);
        if finished.is_none() && seq.tokens.len() >= info.context_length {
            finished = Some(SeqFinish::Length);
        }
        seq.resident = true;
        if !job.prefill {
            seq.stats
                .record(job.k_requested, job.drafts.len(), verdict.accepted);
        }
        if finished.is_some() {
            seq.finished = finished;
            seq.target_cache.clear();
            if let Some(cache) = seq.draft_cache.as_mut() {
                cache.clear();
            }
        }
        outputs.push(SeqStepOutput {
            id: job.id,
            new_tokens: emitted,
            drafted_tokens: job.drafts.len(),
            accepted_tokens: verdict.accepted,
            finished,
            prefilled: job.prefill,
            prefill_pending: false,
            logprobs,
        });
    }
    Ok(outputs)
}

/// The last row of a `[rows, vocab]` logits tensor.
fn last_row(logits: &Tensor) -> Result<Vec<f32>, EngineError> {
    let n_rows = logits.dim(0)?;
    Ok(logits.get(n_rows - 1)?.to_vec1::<f32>()?)
}
