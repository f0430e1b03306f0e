"""Deterministic tiny GGUF models for tests, the demo and `bench --quick`.

The writers produce real llama.cpp files (llama, qwen2vl, gemma3 text models with a real
tokenizer; CLIP+mlp, qwen2vl_merger and gemma3 mmprojs) from seeded random weights, so the
whole pipeline runs offline. Same arguments, same bytes.
"""
