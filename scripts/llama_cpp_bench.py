#!/usr/bin/env python3
"""Batch-1 greedy decode speed of llama.cpp (through llama-cpp-python) on a GGUF file, for the
side-by-side engine benchmark (scripts/engine-benchmark.sh). Prints one JSON line per run:
{"prompt": name, "prompt_tokens": n, "generated": n, "decode_tokens_per_s": x} where decode speed
excludes the prompt's prefill and the first token (as `lapsd generate`'s "then X tokens/s").
Prompts are rendered with the GGUF's own chat template (as `lapsd generate --chat` does), so both
engines decode the same answer to the same templated prompt.

Usage: llama_cpp_bench.py MODEL.gguf THREADS MAX_TOKENS RUNS
"""
import json
import sys
import time
from pathlib import Path

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

# The prompts of every engine benchmark script (name -> user message), in one file.
with open(Path(__file__).with_name("engine-prompts.json"), encoding="utf-8") as f:
    PROMPTS = json.load(f)


def main() -> int:
    model_path, threads, max_tokens, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    llm = Llama(model_path=model_path, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False, seed=0)
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        print("error: the GGUF has no tokenizer.chat_template", file=sys.stderr)
        return 1
    eos = llm.detokenize([llm.token_eos()]).decode(errors="replace")
    bos = llm.detokenize([llm.token_bos()]).decode(errors="replace") if llm.token_bos() >= 0 else ""
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    # The end-of-turn tokens lapsd also stops at (model/mod.rs END_TOKENS) plus the GGUF's EOS.
    end_ids = {llm.token_eos()}
    for end in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
        ids = llm.tokenize(end.encode(), add_bos=False, special=True)
        if len(ids) == 1:
            end_ids.add(ids[0])
    for name, text in PROMPTS.items():
        rendered = formatter(messages=[{"role": "user", "content": text}]).prompt
        tokens = llm.tokenize(rendered.encode(), add_bos=False, special=True)
        for _ in range(runs):
            llm.reset()
            llm.eval(tokens)  # prefill, not timed
            generated = 0
            start = None
            # greedy: sample with temp 0 one token at a time, feeding it back.
            while generated < max_tokens:
                tok = llm.sample(temp=0.0)
                if tok in end_ids:
                    break
                if start is None:
                    start = time.perf_counter()  # first token produced; time the rest
                llm.eval([tok])
                generated += 1
            elapsed = time.perf_counter() - (start or time.perf_counter())
            # The timed span holds exactly `generated` single-token forwards.
            rate = generated / elapsed if generated > 0 and elapsed > 0 else 0.0
            print(json.dumps({"prompt": name, "prompt_tokens": len(tokens), "generated": generated,
                              "decode_tokens_per_s": rate}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
