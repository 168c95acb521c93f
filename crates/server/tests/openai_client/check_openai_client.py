#!/usr/bin/env python3
"""Checks that the official `openai` Python client works unchanged against `lapsd serve`.

Usage: check_openai_client.py BASE_URL [API_KEY]   (e.g. http://127.0.0.1:8000/v1)
Runs completions and chat completions, streamed and not, with greedy sampling, and checks that
streamed text equals the non-streamed text, usage is reported, the lapsd statistics are present,
and errors come back as the client's typed exceptions. With API_KEY (the server runs with
--api-key), also checks that a wrong key is refused. Exits non-zero on the first failure.
"""
import sys

import openai


def main() -> int:
    base_url = sys.argv[1]
    api_key = sys.argv[2] if len(sys.argv) > 2 else "unused"
    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=300, max_retries=0)
    if len(sys.argv) > 2:
        wrong = openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0)
        try:
            wrong.models.list()
            raise AssertionError("a wrong API key was accepted")
        except openai.AuthenticationError as e:
            assert e.body["code"] == "invalid_api_key", e.body
    models = client.models.list()
    model = models.data[0].id
    print(f"model: {model}")

    prompt = "The capital of France is"
    c = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
    text = c.choices[0].text
    assert c.usage is not None and c.usage.completion_tokens > 0, c
    extra = c.model_extra or {}
    sd = extra["metrics"]["speculative_decoding"]
    print(f"completion: {text!r} usage={c.usage} spec_decode={sd}")

    chunks = list(
        client.completions.create(
            model=model, prompt=prompt, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert streamed == text, (streamed, text)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == c.usage.completion_tokens

    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    reply = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    print(f"chat: {reply!r} finish={r.choices[0].finish_reason}")
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, stream=True
    )
    streamed = "".join((ch.choices[0].delta.content or "") for ch in stream if ch.choices)
    assert streamed == reply, (streamed, reply)

    try:
        client.completions.create(model=model, prompt=prompt, max_tokens=0)
        raise AssertionError("max_tokens=0 was accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "max_tokens", e.body
    try:
        client.completions.create(model="no-such-model", prompt=prompt, max_tokens=2)
        raise AssertionError("unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.body["param"] == "model", e.body
    print("openai client: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
