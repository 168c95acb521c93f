use candle_core::{Device, Tensor};
use lapsd_engine::{Model, SeqForward};
fn lsm(v: &[f32], t: u32) -> f32 { let m = v.iter().cloned().fold(f32::MIN, f32::max); let s: f32 = v.iter().map(|x| (x - m).exp()).sum(); v[t as usize] - m - s.ln() }
#[test]
fn dbg() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (model, tok) = Model::load_with_tokenizer(&path).unwrap();
    let ids = tok.encode("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the capital of Germany. The sun rises in the east.", false).unwrap();
    println!("{ids:?}");
    let n = ids.len();
    let mut cache = model.new_cache();
    let ours = model.forward_batch(&mut [SeqForward { tokens: &ids, cache: &mut cache }]).unwrap().remove(0).to_vec2::<f32>().unwrap();
    let mut c2 = model.new_cache();
    let mut ours_inc = vec![];
    for t in &ids { ours_inc.push(model.forward_batch(&mut [SeqForward { tokens: &[*t], cache: &mut c2 }]).unwrap().remove(0).to_vec2::<f32>().unwrap().remove(0)); }
    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut r = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let mut theirs = vec![];
    for (i, t) in ids.iter().enumerate() { let inp = Tensor::new(&[*t], &Device::Cpu).unwrap().unsqueeze(0).unwrap(); theirs.push(r.forward(&inp, i).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()); }
    let (mut a, mut b, mut c) = (0f32, 0f32, 0f32);
    let md = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let mut d = 0f32;
    for i in 0..n - 1 { a -= lsm(&ours[i], ids[i + 1]); b -= lsm(&theirs[i], ids[i + 1]); c -= lsm(&ours_inc[i], ids[i+1]); d = d.max(md(&ours[i], &ours_inc[i])); }
    println!("NLL/token ours {} ours_inc {} theirs {}  ours full-vs-inc maxdiff {d}", a / (n - 1) as f32, c / (n-1) as f32, b / (n - 1) as f32);
}
