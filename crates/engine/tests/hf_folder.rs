//! Hugging Face model folders, tested without a hub: each test writes a folder from the embedded
//! GGUF model (SmolLM2-135M-Instruct, Q4_1 projections and a Q8_0 embedding): every tensor
//! dequantized to f32 under its Hugging Face name, llama's Q/K rows put back into the Hugging
//! Face order that llama.cpp's converter permuted them out of, config.json and
//! generation_config.json from the GGUF metadata, the GGUF's tokenizer saved as tokenizer.json,
//! its chat template in tokenizer_config.json. Then it loads the folder and the GGUF file and
//! compares greedy text and logits (and runs the engine with the folder as target and draft).
//!
//! What is compared, and the tolerance. Loaded with the defaults, both models run the same
//! arithmetic: the GGUF's Q4_1 projections are re-quantized to Q8_0 from their f32 values
//! (`requantize_slow_types`) and the folder's f32 projections are quantized to Q8_0 from the same
//! values (`quantize_float_weights`); the tied LM head is the GGUF's Q8_0 embedding as it is
//! against a re-quantization of its dequantized values, which gives back the same blocks; and
//! both keep the same f32 copy for prompts. So the logits should agree bit for bit (measured:
//! max |diff| 0 on every step); the test allows 1e-4 x max(1, largest |logit|), the bound the
//! other forward tests use for "same arithmetic". Q/K rows in the wrong order move the logits by
//! about half their scale (measured: 0.48) and change the text: a test below checks that the
//! comparison catches it.
//!
//! A folder loaded without quantization runs f32 projections everywhere: its prompt logits match
//! the GGUF model's f32 prompt path within the same 1e-4 bound (measured: 0); its decode steps
//! differ from the GGUF's Q8_0 ones by the Q8_0 rounding (measured: 0.047 of the logit scale;
//! bound 0.1). f16/bf16 folders round each weight first; their bounds are stated at that test. qwen2 is tested on a tiny
//! random model written in both formats (the last test).
mod spec_common;
use spec_common::{greedy_params, model_path, run_to_end};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lapsd_engine::chat::{ChatMessage, ChatTemplate};
use lapsd_engine::engine::{EngineConfig, SdEngine};
use lapsd_engine::gguf::GgufFile;
use lapsd_engine::{EngineError, LoadOptions, Model, SeqForward, Tokenizer};

/// Tokens generated per prompt.
const NEW_TOKENS: usize = 24;
/// Max |diff| of two runs of the same arithmetic, relative to max(1, largest |logit|).
const SAME_ARITHMETIC: f32 = 1e-4;

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("lapsd-hf-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// How the test writes a folder.
struct FolderSpec {
    /// The safetensors dtype of each tensor, by its Hugging Face name.
    dtype_of: fn(&str) -> DType,
    /// Round each tensor to that dtype but store it as f32 (a reference for the dtype's load).
    stored_as_f32: bool,
    /// Write the chat template as a list of named templates instead of one string.
    named_templates: bool,
    /// Undo llama.cpp's Q/K row permutation (false writes a wrong folder on purpose).
    unpermute_qk: bool,
}

/// llama.cpp's GGUF layout -> Hugging Face's, for the rows of each head of a Q/K weight: row
/// `2i + j` of a head goes back to row `j * head_dim/2 + i` (the inverse of the permutation
/// llama.cpp's converter applies).
fn interleaved_to_halves(t: &Tensor, n_heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().expect("a matrix");
    let head_dim = rows / n_heads;
    t.reshape((n_heads, head_dim / 2, 2, cols))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((rows, cols)))
        .expect("permutes")
}

fn write_json(path: PathBuf, value: serde_json::Value) {
    std::fs::write(
        path,
        serde_json::to_string_pretty(&value).expect("serializes"),
    )
    .expect("writes json");
}

/// Writes the embedded GGUF model as a Hugging Face folder in `dir`, in two safetensors shards.
fn write_folder(dir: &Path, spec: &FolderSpec) {
    let dev = Device::Cpu;
    let mut gguf = GgufFile::open(&model_path()).expect("GGUF opens");
    assert_eq!(gguf.str("general.architecture").expect("arch"), "llama");
    let key = |k: &str| format!("llama.{k}");
    let n_layers = gguf.usize(&key("block_count")).expect("block_count");
    let n_heads = gguf.usize(&key("attention.head_count")).expect("heads");
    let n_kv_heads = gguf
        .usize(&key("attention.head_count_kv"))
        .expect("kv heads");
    let tied = !gguf.has_tensor("output.weight");
    let template = gguf
        .opt_str("tokenizer.chat_template")
        .expect("the model has a chat template")
        .to_string();
    let bos = gguf.u64("tokenizer.ggml.bos_token_id").expect("bos");
    let eos = gguf.u64("tokenizer.ggml.eos_token_id").expect("eos");
    write_json(
        dir.join("config.json"),
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": gguf.usize(&key("embedding_length")).expect("hidden"),
            "intermediate_size": gguf.usize(&key("feed_forward_length")).expect("ffn"),
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv_heads,
            "rms_norm_eps": gguf.opt_f64(&key("attention.layer_norm_rms_epsilon")).expect("eps"),
            "rope_theta": gguf.opt_f64(&key("rope.freq_base")).expect("rope base"),
            "rope_scaling": null,
            "max_position_embeddings": gguf.usize(&key("context_length")).expect("context"),
            "vocab_size": gguf.usize(&key("vocab_size")).expect("vocab"),
            "tie_word_embeddings": tied,
            "hidden_act": "silu",
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        }),
    );
    // A list here, as many models write it; config.json's single id is overridden by it.
    write_json(
        dir.join("generation_config.json"),
        serde_json::json!({ "bos_token_id": bos, "eos_token_id": [eos] }),
    );
    let chat_template = if spec.named_templates {
        serde_json::json!([
            { "name": "tool_use", "template": "{{ 'not the chat template' }}" },
            { "name": "default", "template": template },
        ])
    } else {
        serde_json::Value::String(template)
    };
    write_json(
        dir.join("tokenizer_config.json"),
        serde_json::json!({ "add_bos_token": false, "chat_template": chat_template }),
    );
    Tokenizer::from_gguf_file(&model_path())
        .expect("GGUF tokenizer")
        .inner()
        .save(dir.join("tokenizer.json"), false)
        .expect("tokenizer.json saves");

    let mut names: Vec<(String, String)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
        ),
        ("output_norm.weight".into(), "model.norm.weight".into()),
    ];
    if !tied {
        names.push(("output.weight".into(), "lm_head.weight".into()));
    }
    for i in 0..n_layers {
        for (gguf_part, hf_part) in [
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ] {
            names.push((
                format!("blk.{i}.{gguf_part}.weight"),
                format!("model.layers.{i}.{hf_part}.weight"),
            ));
        }
    }
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    for (gguf_name, hf_name) in names {
        let mut t = gguf
            .tensor(&gguf_name, &dev)
            .expect("tensor reads")
            .dequantize(&dev)
            .expect("dequantizes");
        if spec.unpermute_qk {
            if gguf_name.ends_with(".attn_q.weight") {
                t = interleaved_to_halves(&t, n_heads);
            } else if gguf_name.ends_with(".attn_k.weight") {
                t = interleaved_to_halves(&t, n_kv_heads);
            }
        }
        let mut t = t.to_dtype((spec.dtype_of)(&hf_name)).expect("converts");
        if spec.stored_as_f32 {
            t = t.to_dtype(DType::F32).expect("converts");
        }
        // Layers of the second half go to the second shard, as a sharded checkpoint splits.
        let layer: Option<usize> = hf_name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse().ok());
        let shard = usize::from(layer.is_some_and(|l| l >= n_layers / 2));
        shards[shard].insert(hf_name, t);
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        candle_core::safetensors::save(shard, path).expect("safetensors saves");
    }
}

fn all_f32(_: &str) -> DType {
    DType::F32
}

/// Greedy decoding from `prompt`, one token per forward; returns the tokens and each step's
/// logits (of the last input row).
fn greedy(model: &Model, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut cache = model.new_cache();
    let mut tokens = Vec::new();
    let mut logits = Vec::new();
    let mut input = prompt.to_vec();
    while tokens.len() < NEW_TOKENS {
        let out = model
            .forward_batch(&mut [SeqForward {
                tokens: &input,
                cache: &mut cache,
            }])
            .expect("forward succeeds");
        let row = out[0]
            .to_vec2::<f32>()
            .expect("logits are [rows, vocab] f32")
            .pop()
            .expect("one row per token");
        let next = lapsd_engine::spec::argmax(&row);
        logits.push(row);
        if model.info().eos_token_ids.contains(&next) {
            break;
        }
        tokens.push(next);
        input = vec![next];
    }
    (tokens, logits)
}

/// The logits `model` gives at each of `steps` greedy steps when fed `prompt`, then `tokens`
/// one by one (another model's greedy output), whatever it would have chosen itself.
fn teacher_forced(model: &Model, prompt: &[u32], tokens: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut logits = Vec::with_capacity(steps);
    let mut input = prompt.to_vec();
    for step in 0..steps {
        let out = model
            .forward_batch(&mut [SeqForward {
                tokens: &input,
                cache: &mut cache,
            }])
            .expect("forward succeeds");
        let row = out[0].to_vec2::<f32>().expect("logits").pop();
        logits.push(row.expect("one row per token"));
        match tokens.get(step) {
            Some(&next) => input = vec![next],
            None => break,
        }
    }
    logits
}

/// Largest |a - b| relative to max(1, largest |a|), over the rows of two logit lists.
fn max_relative_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "step count");
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "vocabulary");
        let scale = x.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        worst = worst.max(diff / scale);
    }
    worst
}

/// A chat prompt (rendered with the template the folder supplies: over 16 tokens, so its
/// prefill takes the f32 prompt path) and a short plain one (quantized path).
fn prompts(model: &Model, tokenizer: &Tokenizer) -> Vec<Vec<u32>> {
    let chat = ChatTemplate::for_model(model.info(), tokenizer)
        .render(
            &[ChatMessage::user("Give three tips for staying healthy.")],
            true,
        )
        .expect("the chat template renders");
    let prompts: Vec<Vec<u32>> = [chat.as_str(), "The capital of France is"]
        .iter()
        .map(|t| tokenizer.encode(t, true).expect("prompt encodes"))
        .collect();
    assert!(prompts[0].len() >= 16 && prompts[1].len() < 16);
    prompts
}

/// Default options but with the f32 copy of every projection kept for prompts (by default
/// only candle-served weights keep one), so that the folder's f32 projections and the GGUF's
/// f32 prompt path can be compared.
fn with_f32_prompt_path() -> LoadOptions {
    LoadOptions {
        dense_for_own_kernels: true,
        ..LoadOptions::default()
    }
}

fn gguf_model() -> (Model, Tokenizer) {
    Model::load_with_tokenizer_options(&model_path(), &with_f32_prompt_path())
        .expect("the embedded model loads")
}

/// The embedded model with its Q4_1 projections re-quantized to Q8_0 at load: the arithmetic of
/// a folder of its values quantized at load (`LoadOptions::quantize_float_weights`).
fn gguf_model_as_q8_0() -> (Model, Tokenizer) {
    let options = LoadOptions {
        requantize_all_to_q8_0: true,
        ..with_f32_prompt_path()
    };
    Model::load_with_tokenizer_options(&model_path(), &options).expect("the embedded model loads")
}

#[test]
fn an_f32_folder_gives_the_gguf_models_text_and_logits() {
    let dir = TempDir::new("f32");
    write_folder(
        &dir.0,
        &FolderSpec {
            dtype_of: all_f32,
            stored_as_f32: false,
            named_templates: false,
            unpermute_qk: true,
        },
    );
    let (gguf, gguf_tok) = gguf_model_as_q8_0();
    let (folder, folder_tok) = Model::load_with_tokenizer_options(&dir.0, &with_f32_prompt_path())
        .expect("the folder loads");

    let (a, b) = (gguf.info(), folder.info());
    assert_eq!(b.architecture, "llama");
    assert_eq!(
        (a.n_layers, a.vocab_size, a.head_rows, a.context_length),
        (b.n_layers, b.vocab_size, b.head_rows, b.context_length)
    );
    assert_eq!(
        (a.hidden_size, a.n_heads, a.n_kv_heads, a.head_dim),
        (b.hidden_size, b.n_heads, b.n_kv_heads, b.head_dim)
    );
    assert_eq!(a.kv_bytes_per_token, b.kv_bytes_per_token);
    assert_eq!(a.bos_token_id, b.bos_token_id);
    assert_eq!(a.eos_token_ids, b.eos_token_ids);
    assert_eq!(a.chat_template, b.chat_template);
    assert_eq!(
        Some(b.name.as_str()),
        dir.0.file_name().and_then(|n| n.to_str())
    );

    let folder_prompts = prompts(&folder, &folder_tok);
    assert_eq!(
        folder_prompts,
        prompts(&gguf, &gguf_tok),
        "tokenizers agree"
    );
    for prompt in &folder_prompts {
        let (want_tokens, want_logits) = greedy(&gguf, prompt);
        let (got_tokens, got_logits) = greedy(&folder, prompt);
        let want_text = gguf_tok.decode(&want_tokens).expect("decodes");
        let got_text = folder_tok.decode(&got_tokens).expect("decodes");
        assert_eq!(got_text, want_text);
        assert_eq!(got_tokens, want_tokens);
        let diff = max_relative_diff(&want_logits, &got_logits);
        eprintln!(
            "quantized folder vs GGUF, prompt of {} tokens: max relative logit diff {diff:e}",
            prompt.len()
        );
        assert!(diff <= SAME_ARITHMETIC, "max relative logit diff {diff}");
    }

    // The engine takes the folder as its target and as a draft model (`model:DIR`): greedy
    // speculative decoding gives the GGUF model's greedy tokens. The engine loads with default
    // options (no f32 prompt copy for the own kernels' weights), so the GGUF model does too.
    let gguf_default = Model::load_with_options(
        &model_path(),
        &LoadOptions {
            requantize_all_to_q8_0: true,
            ..LoadOptions::default()
        },
    )
    .expect("the embedded model loads");
    let mut engine = SdEngine::load(EngineConfig {
        model_path: dir.0.clone(),
        draft: format!("model:{}", dir.0.display())
            .parse()
            .expect("draft spec parses"),
        weights: lapsd_engine::WeightMode::Fast,
    })
    .expect("the engine loads the folder");
    let prompt = folder_prompts[0].clone();
    engine
        .add_sequence(1, prompt.clone(), greedy_params(NEW_TOKENS as u32))
        .expect("sequence added");
    let out = run_to_end(&mut engine, &[(1, 4)], |_, _| {});
    assert_eq!(out[&1], greedy(&gguf_default, &prompt).0);
    drop(engine);

    // Unquantized: f32 projections everywhere. The prompt's f32 path is the GGUF's too.
    let options = LoadOptions {
        quantize_float_weights: false,
        ..with_f32_prompt_path()
    };
    let exact = Model::load_with_options(&dir.0, &options).expect("the folder loads unquantized");
    let prompt = &folder_prompts[0];
    let prefill = |model: &Model| {
        let mut cache = model.new_cache();
        let out = model
            .forward_batch(&mut [SeqForward {
                tokens: prompt,
                cache: &mut cache,
            }])
            .expect("forward succeeds");
        out[0].to_vec2::<f32>().expect("logits")
    };
    let diff = max_relative_diff(&prefill(&gguf), &prefill(&exact));
    eprintln!("unquantized folder vs GGUF prompt path: max relative logit diff {diff:e}");
    assert!(diff <= SAME_ARITHMETIC, "prompt logits: {diff}");
    // Decode steps: Q8_0 (GGUF, re-quantized) against f32 (folder), teacher-forced on the GGUF's
    // tokens.
    let (tokens, want) = greedy(&gguf, prompt);
    let got = teacher_forced(&exact, prompt, &tokens, want.len());
    let diff = max_relative_diff(&want, &got);
    eprintln!("unquantized folder vs GGUF decode steps: max relative logit diff {diff:e}");
    assert!(diff <= 0.1, "decode logits: {diff}");
}

/// f16 projections, bf16 norms and embedding, the chat template as a list of named templates.
/// Exact check: a second folder holds the same rounded values as f32; both load to the same
/// arithmetic, so greedy text is identical and the logits agree within [`SAME_ARITHMETIC`]
/// (measured: 0). Against the GGUF model, teacher-forced on its greedy tokens (greedy text may
/// part where two tokens are nearly tied): rounding a weight to f16 moves it by up to 2^-11 of
/// itself and to bf16 by up to 2^-8, and quantizing the moved values to Q8_0 moves some of them
/// by a whole Q8_0 step, so the logits differ like two roundings of the model do (measured
/// against the GGUF's own Q4_1 arithmetic: 0.057 and 0.077 of the logit scale on the two prompts;
/// the f32 folder's decode steps differ from the GGUF's by 0.046). Bound: 0.15 x max(1, largest
/// |logit|).
#[test]
fn f16_and_bf16_folders_load_with_their_rounding() {
    fn half_dtypes(name: &str) -> DType {
        if name.ends_with("_proj.weight") {
            DType::F16
        } else {
            DType::BF16
        }
    }
    let half_dir = TempDir::new("half");
    let rounded_dir = TempDir::new("rounded");
    for (dir, stored_as_f32) in [(&half_dir, false), (&rounded_dir, true)] {
        write_folder(
            &dir.0,
            &FolderSpec {
                dtype_of: half_dtypes,
                stored_as_f32,
                named_templates: true,
                unpermute_qk: true,
            },
        );
    }
    let (half, half_tok) = Model::load_with_tokenizer_options(&half_dir.0, &with_f32_prompt_path())
        .expect("the folder loads");
    let (rounded, _) = Model::load_with_tokenizer_options(&rounded_dir.0, &with_f32_prompt_path())
        .expect("the folder loads");
    let (gguf, gguf_tok) = gguf_model();
    assert_eq!(half.info().chat_template, gguf.info().chat_template);
    let folder_prompts = prompts(&half, &half_tok);
    assert_eq!(folder_prompts, prompts(&gguf, &gguf_tok));
    for prompt in &folder_prompts {
        let (want_tokens, want_logits) = greedy(&rounded, prompt);
        let (got_tokens, got_logits) = greedy(&half, prompt);
        assert_eq!(got_tokens, want_tokens);
        let diff = max_relative_diff(&want_logits, &got_logits);
        assert!(diff <= SAME_ARITHMETIC, "max relative logit diff {diff}");

        let (tokens, want) = greedy(&gguf, prompt);
        let got = teacher_forced(&half, prompt, &tokens, want.len());
        let diff = max_relative_diff(&want, &got);
        eprintln!(
            "f16/bf16 folder vs GGUF, prompt of {} tokens: max relative logit diff {diff:e}",
            prompt.len()
        );
        assert!(diff <= 0.15, "max relative logit diff {diff}");
    }
}

/// The comparison has teeth: a folder whose llama Q/K rows were left in llama.cpp's order (so
/// the loader's permutation scrambles them) gives other logits and other text.
#[test]
fn a_folder_with_qk_rows_in_the_wrong_order_does_not_match() {
    let dir = TempDir::new("wrong");
    write_folder(
        &dir.0,
        &FolderSpec {
            dtype_of: all_f32,
            stored_as_f32: false,
            named_templates: false,
            unpermute_qk: false,
        },
    );
    let (gguf, gguf_tok) = gguf_model();
    let (folder, _) = Model::load_with_tokenizer_options(&dir.0, &with_f32_prompt_path())
        .expect("the folder loads");
    let prompt = &prompts(&gguf, &gguf_tok)[0];
    let (want_tokens, want) = greedy(&gguf, prompt);
    let (got_tokens, got) = greedy(&folder, prompt);
    assert_ne!(got_tokens, want_tokens);
    // Only the first step has the same input on both sides.
    let diff = max_relative_diff(&want[..1], &got[..1]);
    eprintln!("wrong Q/K order vs GGUF, first step: max relative logit diff {diff:e}");
    assert!(
        diff > 100.0 * SAME_ARITHMETIC,
        "max relative logit diff {diff}"
    );
}

/// Writes `config.json` for a tiny llama (no weights needed to fail before them).
fn tiny_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32,
        "tie_word_embeddings": true,
    });
    edit(&mut config);
    write_json(dir.join("config.json"), config);
}

#[test]
fn broken_folders_fail_naming_the_file_key_or_tensor() {
    let dir = TempDir::new("broken");
    let d = &dir.0;
    let load = || Model::load_with_tokenizer(d).err().expect("loading fails");

    let err = load();
    assert!(
        matches!(&err, EngineError::MissingHfFile(p) if p.ends_with("config.json")),
        "{err}"
    );
    assert!(err.to_string().contains("config.json"), "{err}");

    tiny_config(d, |c| {
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    let err = load();
    assert!(
        matches!(&err, EngineError::UnsupportedArchitecture(a) if a == "GPT2LMHeadModel"),
        "{err}"
    );
    assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");

    tiny_config(d, |c| {
        c.as_object_mut().expect("object").remove("hidden_size");
    });
    let err = load();
    assert!(matches!(&err, EngineError::InvalidHfFile { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("config.json") && text.contains("`hidden_size`"),
        "{text}"
    );

    tiny_config(d, |c| {
        c["rope_scaling"] = serde_json::json!({ "rope_type": "llama3", "factor": 8.0 })
    });
    let text = load().to_string();
    assert!(text.contains("`rope_scaling`"), "{text}");

    tiny_config(d, |_| {});
    let err = load();
    assert!(
        matches!(&err, EngineError::MissingHfFile(p) if p.ends_with("tokenizer.json")),
        "{err}"
    );

    Tokenizer::from_gguf_file(&model_path())
        .expect("GGUF tokenizer")
        .inner()
        .save(d.join("tokenizer.json"), false)
        .expect("tokenizer.json saves");
    let err = load();
    assert!(
        matches!(&err, EngineError::MissingHfFile(p) if p.ends_with("*.safetensors")),
        "{err}"
    );

    let dev = Device::Cpu;
    let weights = d.join("model.safetensors");
    let embedding = Tensor::zeros((8, 64), DType::F32, &dev).expect("tensor");
    let tensors = HashMap::from([("model.embed_tokens.weight", embedding)]);
    candle_core::safetensors::save(&tensors, &weights).expect("saves");
    let err = load();
    assert!(
        matches!(&err, EngineError::MissingHfTensor { name, .. } if name == "model.norm.weight"),
        "{err}"
    );

    let embedding = Tensor::zeros((8, 64), DType::F32, &dev).expect("tensor");
    let norm = Tensor::ones(32, DType::F32, &dev).expect("tensor");
    let tensors = HashMap::from([
        ("model.embed_tokens.weight", embedding),
        ("model.norm.weight", norm),
    ]);
    candle_core::safetensors::save(&tensors, &weights).expect("saves");
    let err = load();
    let text = err.to_string();
    assert!(matches!(&err, EngineError::InvalidModel(_)), "{err}");
    assert!(
        text.contains("`model.norm.weight`") && text.contains("[32]"),
        "{text}"
    );

    let ids = Tensor::zeros((8, 64), DType::I64, &dev).expect("tensor");
    let tensors = HashMap::from([("model.embed_tokens.weight", ids)]);
    candle_core::safetensors::save(&tensors, &weights).expect("saves");
    let text = load().to_string();
    assert!(
        text.contains("model.safetensors")
            && text.contains("model.embed_tokens.weight")
            && text.contains("I64"),
        "{text}"
    );

    std::fs::write(&weights, b"not a safetensors file").expect("writes");
    let text = load().to_string();
    assert!(text.contains("model.safetensors"), "{text}");
}

/// Deterministic weights in [-scale, scale) (no random generator needed).
fn pattern(seed: usize, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
        .map(|v| v * scale)
        .collect()
}

/// Hugging Face layout -> llama.cpp's for the rows of each head of a llama Q/K weight (what
/// llama.cpp's converter does): row `j * head_dim/2 + i` of a head goes to row `2i + j`.
fn halves_to_interleaved(t: &Tensor, n_heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().expect("a matrix");
    let head_dim = rows / n_heads;
    t.reshape((n_heads, 2, head_dim / 2, cols))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.reshape((rows, cols)))
        .expect("permutes")
}

/// A tiny random model of each architecture, written both as a GGUF file (f32 tensors, llama's
/// Q/K rows in llama.cpp's order) and as a Hugging Face folder: qwen2 with Q/K/V biases and tied
/// embeddings, llama with an LM head of its own. Loaded unquantized, both sides run f32 matmuls
/// on the same values, so the logits agree within [`SAME_ARITHMETIC`]. This is the test of the
/// qwen2 mapping (the embedded model is a llama).
#[test]
fn tiny_llama_and_qwen2_models_load_alike_from_gguf_and_folder() {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};

    let (hidden, n_heads, n_kv_heads, head_dim, ffn, n_layers, vocab) = (64, 4, 2, 16, 96, 2, 128);
    let dev = Device::Cpu;
    for arch in ["llama", "qwen2"] {
        let dir = TempDir::new(&format!("tiny-{arch}"));
        let folder = dir.0.join("folder");
        std::fs::create_dir_all(&folder).expect("folder");
        let qwen = arch == "qwen2";
        let mut seed = 0;
        let mut tensor = |shape: &[usize], scale: f32, offset: f32| {
            seed += 1;
            let n = shape.iter().product();
            let values: Vec<f32> = pattern(seed, n, scale)
                .into_iter()
                .map(|v| v + offset)
                .collect();
            Tensor::from_vec(values, shape, &dev).expect("tensor")
        };
        // (GGUF name, Hugging Face name, tensor in Hugging Face layout)
        let mut weights = vec![
            (
                "token_embd.weight".to_string(),
                "model.embed_tokens.weight".to_string(),
                tensor(&[vocab, hidden], 1.0, 0.0),
            ),
            (
                "output_norm.weight".into(),
                "model.norm.weight".into(),
                tensor(&[hidden], 0.2, 1.0),
            ),
        ];
        if !qwen {
            weights.push((
                "output.weight".into(),
                "lm_head.weight".into(),
                tensor(&[vocab, hidden], 0.2, 0.0),
            ));
        }
        for i in 0..n_layers {
            let mut layer = |gguf: &str, hf: &str, t: Tensor| {
                weights.push((
                    format!("blk.{i}.{gguf}"),
                    format!("model.layers.{i}.{hf}"),
                    t,
                ))
            };
            layer(
                "attn_norm.weight",
                "input_layernorm.weight",
                tensor(&[hidden], 0.2, 1.0),
            );
            layer(
                "ffn_norm.weight",
                "post_attention_layernorm.weight",
                tensor(&[hidden], 0.2, 1.0),
            );
            layer(
                "attn_q.weight",
                "self_attn.q_proj.weight",
                tensor(&[n_heads * head_dim, hidden], 0.2, 0.0),
            );
            layer(
                "attn_k.weight",
                "self_attn.k_proj.weight",
                tensor(&[n_kv_heads * head_dim, hidden], 0.2, 0.0),
            );
            layer(
                "attn_v.weight",
                "self_attn.v_proj.weight",
                tensor(&[n_kv_heads * head_dim, hidden], 0.2, 0.0),
            );
            layer(
                "attn_output.weight",
                "self_attn.o_proj.weight",
                tensor(&[hidden, n_heads * head_dim], 0.2, 0.0),
            );
            layer(
                "ffn_gate.weight",
                "mlp.gate_proj.weight",
                tensor(&[ffn, hidden], 0.2, 0.0),
            );
            layer(
                "ffn_up.weight",
                "mlp.up_proj.weight",
                tensor(&[ffn, hidden], 0.2, 0.0),
            );
            layer(
                "ffn_down.weight",
                "mlp.down_proj.weight",
                tensor(&[hidden, ffn], 0.2, 0.0),
            );
            if qwen {
                layer(
                    "attn_q.bias",
                    "self_attn.q_proj.bias",
                    tensor(&[n_heads * head_dim], 0.5, 0.0),
                );
                layer(
                    "attn_k.bias",
                    "self_attn.k_proj.bias",
                    tensor(&[n_kv_heads * head_dim], 0.5, 0.0),
                );
                layer(
                    "attn_v.bias",
                    "self_attn.v_proj.bias",
                    tensor(&[n_kv_heads * head_dim], 0.5, 0.0),
                );
            }
        }

        let hf: HashMap<&str, Tensor> = weights
            .iter()
            .map(|(_, name, t)| (name.as_str(), t.clone()))
            .collect();
        candle_core::safetensors::save(&hf, folder.join("model.safetensors")).expect("saves");
        write_json(
            folder.join("config.json"),
            serde_json::json!({
                "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
                "hidden_size": hidden,
                "intermediate_size": ffn,
                "num_hidden_layers": n_layers,
                "num_attention_heads": n_heads,
                "num_key_value_heads": n_kv_heads,
                "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0,
                "max_position_embeddings": 64,
                "vocab_size": vocab,
                "tie_word_embeddings": qwen,
                "eos_token_id": 2,
            }),
        );
        Tokenizer::from_gguf_file(&model_path())
            .expect("GGUF tokenizer")
            .inner()
            .save(folder.join("tokenizer.json"), false)
            .expect("tokenizer.json saves");

        let gguf_tensors: Vec<(String, QTensor)> = weights
            .iter()
            .map(|(name, _, t)| {
                let t = match (
                    qwen,
                    name.ends_with("attn_q.weight"),
                    name.ends_with("attn_k.weight"),
                ) {
                    (false, true, _) => halves_to_interleaved(t, n_heads),
                    (false, _, true) => halves_to_interleaved(t, n_kv_heads),
                    _ => t.clone(),
                };
                (
                    name.clone(),
                    QTensor::quantize(&t, GgmlDType::F32).expect("f32 QTensor"),
                )
            })
            .collect();
        let key = |k: &str| format!("{arch}.{k}");
        let metadata = [
            (
                "general.architecture".to_string(),
                Value::String(arch.to_string()),
            ),
            (key("embedding_length"), Value::U32(hidden as u32)),
            (key("block_count"), Value::U32(n_layers as u32)),
            (key("attention.head_count"), Value::U32(n_heads as u32)),
            (
                key("attention.head_count_kv"),
                Value::U32(n_kv_heads as u32),
            ),
            (key("context_length"), Value::U32(64)),
            (key("rope.freq_base"), Value::F32(10000.0)),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        ];
        let gguf_path = dir.0.join("tiny.gguf");
        let mut file = std::fs::File::create(&gguf_path).expect("creates");
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            gguf_tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut file, &metadata, &tensors).expect("GGUF writes");
        drop(file);

        let options = LoadOptions {
            quantize_float_weights: false,
            ..LoadOptions::default()
        };
        let from_gguf = Model::load_with_options(&gguf_path, &options).expect("GGUF loads");
        let from_folder = Model::load_with_options(&folder, &options).expect("folder loads");
        assert_eq!(from_folder.info().architecture, arch);
        let run = |model: &Model| {
            let mut cache = model.new_cache();
            let mut rows = Vec::new();
            for tokens in [&[1u32, 5, 9, 3, 7, 100][..], &[11u32][..], &[127u32][..]] {
                let out = model
                    .forward_batch(&mut [SeqForward {
                        tokens,
                        cache: &mut cache,
                    }])
                    .expect("forward succeeds");
                rows.extend(out[0].to_vec2::<f32>().expect("logits"));
            }
            rows
        };
        let diff = max_relative_diff(&run(&from_gguf), &run(&from_folder));
        eprintln!("tiny {arch}: folder vs GGUF max relative logit diff {diff:e}");
        assert!(
            diff <= SAME_ARITHMETIC,
            "{arch}: max relative logit diff {diff}"
        );
    }
}

/// A `tokenizer.json` beside a GGUF file replaces the file's vocabulary for every caller: the
/// engine's load and the tokenizer `lapsd serve`'s HTTP handlers build
/// (`Tokenizer::for_model_path`) encode alike. Here the file beside it is a two-word vocabulary,
/// so the GGUF's own BPE ids would give other ids.
#[test]
fn a_tokenizer_json_beside_a_gguf_file_is_used_by_every_loader() {
    let dir = TempDir::new("beside");
    let gguf = dir.0.join("model.gguf");
    #[cfg(unix)]
    std::os::unix::fs::symlink(model_path(), &gguf).expect("links the model");
    #[cfg(not(unix))]
    std::fs::copy(model_path(), &gguf).expect("copies the model");
    let own = Tokenizer::for_model_path(&gguf).expect("the GGUF's tokenizer");
    let own_ids = own.encode("hello world", false).expect("encodes");
    std::fs::write(
        dir.0.join("tokenizer.json"),
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel",
            "vocab":{"hello":0,"world":1,"[UNK]":2},"unk_token":"[UNK]"}}"#,
    )
    .expect("writes tokenizer.json");
    let for_http = Tokenizer::for_model_path(&gguf).expect("the tokenizer beside it");
    assert_eq!(
        for_http.encode("hello world", false).expect("encodes"),
        [0, 1]
    );
    assert_ne!(own_ids, [0, 1]);
    let (_, for_engine) = Model::load_with_tokenizer(&gguf).expect("the model loads");
    assert_eq!(
        for_engine.encode("hello world", false).expect("encodes"),
        [0, 1]
    );
}
