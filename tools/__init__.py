"""Developer and CI tools: check builds of the patched llama.cpp (sanitizers, aarch64)."""
