use candle_core::{Device, Tensor};
use lapsd_engine::Model;
#[test]
fn dbg() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (_model, tok) = Model::load_with_tokenizer(&path).unwrap();
    for prompt in ["<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"] {
    let ids = tok.encode(prompt, false).unwrap();
    println!("{ids:?}");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut r = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let mut out = vec![];
    let mut next = ids.clone(); let mut pos = 0;
    for _ in 0..20 { let inp = Tensor::new(next.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(); let l = r.forward(&inp, pos).unwrap().flatten_all().unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap(); pos += next.len(); out.push(l); next = vec![l]; }
    println!("theirs: {:?}", tok.decode(&out).unwrap());
    }
}
