//! Our forward pass agrees with candle-transformers' quantized llama (an independent implementation
//! of the same GGUF model) on the last position's logits.
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use lapsd_engine::{Model, SeqForward, Tokenizer};

fn model_path() -> PathBuf {
    let path = std::env::var_os("LAPSD_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(
        path.is_file(),
        "model file {} is missing: run scripts/fetch-models.sh (or set LAPSD_MODEL)",
        path.display()
    );
    path
}

#[test]
fn last_logits_match_candle_quantized_llama() {
    let path = model_path();
    let (model, tok) = Model::load_with_tokenizer(&path).unwrap();
    let prompts = [
        "The capital of France is",
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "fn fibonacci(n: u64) -> u64 {\n    match n {",
    ];
    for prompt in prompts {
        let ids = tok.encode(prompt, true).unwrap();
        let mut cache = model.new_cache();
        let ours = model
            .forward_batch(&mut [SeqForward {
                tokens: &ids,
                cache: &mut cache,
            }])
            .unwrap()
            .remove(0);
        let ours_last: Vec<f32> = ours.get(ids.len() - 1).unwrap().to_vec1().unwrap();

        let mut file = std::fs::File::open(&path).unwrap();
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
            content,
            &mut file,
            &Device::Cpu,
        )
        .unwrap();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let theirs: Vec<f32> = reference
            .forward(&input, 0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(theirs.len(), ours_last.len());
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_diff = theirs
            .iter()
            .zip(&ours_last)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // Both run the same quantized kernels; only summation order in attention differs.
        assert!(
            max_diff < 1e-3 * scale.max(1.0),
            "{prompt:?}: max |diff| {max_diff} (logit scale {scale})"
        );
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
                .0
        };
        assert_eq!(argmax(&theirs), argmax(&ours_last), "{prompt:?}");
        let _ = Tokenizer::vocab_size(&tok);
    }
}
