"""Deterministic tiny GGUF models for tests, the demo and `bench --quick`.

The writers produce real llama.cpp files from seeded random weights, so the whole pipeline
runs offline. Same arguments, same bytes. Text models (with a real tokenizer): llama, qwen2vl,
gemma3, qwen3vl (deepstack), qwen2, qwen3, mistral3, gemma4 (E2B/E4B and 26B/31B layouts) and
lfm2 (hybrid recurrent); mmprojs: CLIP+mlp, qwen2vl_merger, qwen3vl_merger (deepstack
mergers), gemma3 and gemma4v.
"""
