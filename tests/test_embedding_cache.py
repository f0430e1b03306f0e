"""The image-embedding cache: its file format and store (pure), and the cache behind a real model.

A hit must give exactly the rows an encode gives (so a cached prefill's logits equal an uncached
one's), every key ingredient must change the key, a damaged entry must be re-encoded with a
warning and never decoded, the size limit must evict the least recently used entry, and two
processes writing one key must leave one whole entry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from fastv_edge.embedding_cache import (
    ENV_DIR,
    ENV_MAX_MB,
    EmbeddingCache,
    EncoderKeys,
    cache_dir,
    file_identity,
    max_disk_bytes,
    pixel_digest,
)
from fastv_edge.embedding_store import MAGIC, CorruptEntry, DiskStore, decode_entry, encode_entry
from fastv_edge.prompt import ImagePiece

ROWS = np.arange(24, dtype=np.float32).reshape(6, 4) / 7  # (n_tokens, n_embd)


def rows(seed: int, shape=(6, 4)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------- file format
def test_an_entry_round_trips_bit_exactly():
    blob = encode_entry("k1", ROWS, {"grid": [3, 2]})
    assert blob.startswith(MAGIC)
    got, meta = decode_entry(blob, "k1", (6, 4))
    np.testing.assert_array_equal(got, ROWS)
    assert meta == {"grid": [3, 2]} and not got.flags.writeable


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda b: b[:-1], "checksum"),  # one byte short
        (lambda b: b[: len(b) // 2], "checksum"),  # a torn write
        (lambda b: b[:10], "truncated"),
        (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "checksum"),  # one flipped bit in the header
        (lambda b: b[:-40] + bytes([b[-40] ^ 0x80]) + b[-39:], "checksum"),  # ... in the rows
        (lambda b: b"XXXXXXXX" + b[8:], "magic"),
        (lambda b: b"", "truncated"),
    ],
)
def test_a_damaged_entry_is_never_decoded(damage, why):
    with pytest.raises(CorruptEntry, match=why):
        decode_entry(damage(encode_entry("k1", ROWS, {})), "k1", (6, 4))


def test_an_entry_for_another_key_or_shape_is_refused():
    blob = encode_entry("k1", ROWS, {})
    with pytest.raises(CorruptEntry, match="another key"):
        decode_entry(blob, "k2", (6, 4))
    with pytest.raises(CorruptEntry, match="rows"):
        decode_entry(blob, "k1", (4, 6))


# ----------------------------------------------------------------------------------- the store
def test_a_corrupt_file_is_reported_deleted_and_missed(tmp_path):
    store = DiskStore(tmp_path, 1 << 20)
    assert store.write("k1", ROWS, {})
    path = store.path("k1")
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    with pytest.warns(RuntimeWarning, match="k1.emb is corrupt.*re-encoding"):
        assert store.read("k1", (6, 4)) is None
    assert not path.exists()
    assert store.write("k1", ROWS, {}) and store.read("k1", (6, 4)) is not None


def test_the_size_limit_evicts_the_least_recently_used(tmp_path):
    entry = len(encode_entry("a", ROWS, {}))  # every one-letter key gives the same size
    store = DiskStore(tmp_path, 2 * entry)  # room for two
    for key in ("a", "b"):
        assert store.write(key, ROWS, {})
    assert store.read("a", (6, 4)) is not None  # "a" is now more recent than "b"
    assert store.write("c", ROWS, {})
    assert sorted(p.stem for p, _, _ in store.entries()) == ["a", "c"]
    info = store.info()
    assert info["entries"] == 2 and info["bytes"] == 2 * entry <= info["max_bytes"]
    assert not store.write("big", rows(0, (200, 100)), {})  # larger than the whole limit: not stored
    assert store.clear() == (2, 2 * entry) and store.entries() == []


def test_an_unwritable_folder_warns_once_and_keeps_working(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = EmbeddingCache(blocker / "cache")
    with pytest.warns(RuntimeWarning, match="cannot write"):
        cache.put("k1", ROWS, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.put("k2", ROWS, {})  # disk writing is off now; memory still works
    np.testing.assert_array_equal(cache.get("k2", (6, 4)), ROWS)


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fastv_edge.embedding_store import DiskStore

    store = DiskStore(sys.argv[1], 1 << 30)
    value = float(sys.argv[2])
    for i in range(int(sys.argv[3])):
        store.write("same-key", np.full((256, 512), value + i, dtype=np.float32), {"writer": sys.argv[2]})
    """
)


def test_two_processes_writing_one_key_leave_one_whole_entry(tmp_path, cli_env):
    n = 30
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(base), str(n)], env=cli_env)
        for base in (1000.0, 2000.0)
    ]
    store = DiskStore(tmp_path, 1 << 30)
    seen = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a half-written entry would warn here
        while any(p.poll() is None for p in procs):
            found = store.read("same-key", (256, 512))
            if found is not None:
                values = np.unique(found[0])
                assert len(values) == 1 and (1000 <= values[0] < 1000 + n or 2000 <= values[0] < 2000 + n)
                seen += 1
    assert [p.wait() for p in procs] == [0, 0]
    final, meta = store.read("same-key", (256, 512))
    assert np.unique(final)[0] in (1000 + n - 1, 2000 + n - 1) and meta["writer"] in ("1000.0", "2000.0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same-key.emb"]  # no temporary file left
    assert seen > 0


# ----------------------------------------------------------------------------------- keys
def piece(digest="d" * 64 + ":0", n_tokens=6, grid=None) -> ImagePiece:
    return ImagePiece(n_tokens=n_tokens, n_pos=n_tokens, non_causal=False, grid=grid, digest=digest)


def test_every_ingredient_changes_the_key(tmp_path, monkeypatch):
    import fastv_edge.embedding_cache as ec

    mmproj = tmp_path / "mmproj.gguf"
    mmproj.write_bytes(b"GGUF" + bytes(100))
    prep = {"image_min_tokens": None, "image_max_tokens": None, "flash_attn": False, "gpu": False}
    base = EncoderKeys(mmproj, prep).key(piece())
    assert EncoderKeys(mmproj, prep).key(piece()) == base  # deterministic
    copy = tmp_path / "copy.gguf"
    shutil.copy(mmproj, copy)
    assert EncoderKeys(copy, prep).key(piece()) == base  # content, not path
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + bytes(99) + b"\1")  # same size, one byte differs
    keys = {
        "mmproj": EncoderKeys(other, prep).key(piece()),
        "cap": EncoderKeys(mmproj, {**prep, "image_max_tokens": 256}).key(piece()),
        "min cap": EncoderKeys(mmproj, {**prep, "image_min_tokens": 64}).key(piece()),
        "flash attention": EncoderKeys(mmproj, {**prep, "flash_attn": True}).key(piece()),
        "pixels": EncoderKeys(mmproj, prep).key(piece(digest="e" * 64 + ":0")),
        "tile": EncoderKeys(mmproj, prep).key(piece(digest="d" * 64 + ":1")),
        "tokens": EncoderKeys(mmproj, prep).key(piece(n_tokens=7)),
        "grid": EncoderKeys(mmproj, prep).key(piece(grid=(3, 2))),
    }
    monkeypatch.setattr(ec, "library_key", lambda: "build:another")
    keys["library"] = EncoderKeys(mmproj, prep).key(piece())
    assert base not in keys.values() and len(set(keys.values())) == len(keys)


def test_pixel_digest_covers_size_and_bytes():
    data = bytes(range(256)) * 3 * 4  # 32 x 24 pixels
    assert pixel_digest(32, 24, data) == pixel_digest(32, 24, bytes(data))
    assert pixel_digest(32, 24, data) != pixel_digest(24, 32, data)  # same bytes, transposed size
    assert pixel_digest(32, 24, data) != pixel_digest(32, 24, data[:-1] + b"\1")


def test_file_identity_is_remembered_per_file_version(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"a" * 1000)
    memo = tmp_path / "ids"
    first = file_identity(path, memo)
    assert len(list(memo.iterdir())) == 1 and file_identity(path, memo) == first
    path.write_bytes(b"b" * 1000)  # rewritten: a new mtime, so a new digest
    os.utime(path, ns=(1, 10**18))
    assert file_identity(path, memo) != first


def test_the_memory_lru_is_bounded(tmp_path):
    one = rows(0, (64, 64))
    cache = EmbeddingCache(tmp_path, disk=False, memory_bytes=2 * one.nbytes)
    for key in ("a", "b", "c"):
        stored = cache.put(key, rows(ord(key), (64, 64)), {})
        assert not stored.flags.writeable  # shared by every hit: nobody may write into it
    assert cache.get("a", (64, 64)) is None  # the oldest went
    np.testing.assert_array_equal(cache.get("c", (64, 64)), rows(ord("c"), (64, 64)))
    assert list(tmp_path.iterdir()) == []  # disk=False writes nothing


def test_folder_and_limit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" and cache_dir(tmp_path / "y") == tmp_path / "y"
    monkeypatch.delenv(ENV_DIR)
    assert cache_dir().parts[-3:] == (".cache", "fastv-edge", "embeddings")
    monkeypatch.setenv(ENV_MAX_MB, "1.5")
    assert max_disk_bytes() == int(1.5 * 2**20)
    for bad in ("-1", "lots"):
        monkeypatch.setenv(ENV_MAX_MB, bad)
        with pytest.raises(ValueError, match=ENV_MAX_MB):
            max_disk_bytes()


# ----------------------------------------------------------------------------------- through a model
@pytest.fixture
def load_tiny(tiny, tmp_path):
    """load_tiny(cache=True, **runtime) -> the tiny llama + mlp pair, its cache in tmp_path/cache."""
    import fastv_edge as fe

    opened = []

    def factory(cache: bool = True, **kw):
        rt = fe.RuntimeConfig(
            n_ctx=512, n_threads=1, embedding_cache=cache, embedding_cache_dir=str(tmp_path / "cache"), **kw
        )
        opened.append(fe.load(tiny.llama_path, tiny.mmproj_path, runtime=rt, prune=fe.PruneConfig(strategy="none")))
        return opened[-1]

    yield factory
    for model in opened:
        model.close()


def encode(model, image_path):
    from fastv_edge.images import load_image
    from fastv_edge.prompt import tokenize

    with tokenize(model.llm, model.mtmd_ctx, model.marker, [load_image(image_path)], add_special=False) as p:
        return model.encoder.encode(p.images[0])


def prefill_logits(model, image_path, prune) -> tuple[np.ndarray, object]:
    """The last prompt token's logits after a fresh prefill, and the prefill's statistics."""
    import llama_cpp

    from fastv_edge.images import load_image
    from fastv_edge.prefill import prefill
    from fastv_edge.prompt import tokenize

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)
    text = f"USER: {model.marker}\nWhat is in the picture?\nASSISTANT:"
    with tokenize(model.llm, model.mtmd_ctx, text, [load_image(image_path)], add_special=True) as p:
        _, stats = prefill(model.target, p, n_past=0, prune=prune)
    logits = llama_cpp.llama_get_logits_ith(model.ctx, -1)
    return np.ctypeslib.as_array(logits, shape=(model.llm.n_vocab(),)).copy(), stats


@pytest.mark.native
def test_a_hit_returns_exactly_a_fresh_encode(load_tiny, photos, tmp_path):
    fresh = encode(load_tiny(cache=False), photos["chelsea"]).embd
    model = load_tiny()
    first, second = encode(model, photos["chelsea"]), encode(model, photos["chelsea"])
    assert (first.cached, second.cached) == (False, True)  # the second from memory
    assert model.embedding_cache.hits_memory == 1
    other = load_tiny()  # a new model: empty memory, the same disk store
    third = encode(other, photos["chelsea"])
    assert third.cached and other.embedding_cache.hits_disk == 1
    for got in (first, second, third):
        np.testing.assert_array_equal(got.embd, fresh)
    assert len(list((tmp_path / "cache").glob("*.emb"))) == 1


@pytest.fixture
def load_qwen2vl(tiny_dir, tmp_path):
    """load_qwen2vl(cache=True) -> a tiny qwen2vl + qwen2vl_merger pair (at most 64 tokens an image)."""
    import fastv_edge as fe
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    lm = make_tiny_qwen2vl(tiny_dir)
    mmproj, _ = make_tiny_vision_mmproj(tiny_dir, "qwen2vl_merger", 64, out_std=0.5)
    opened = []

    def factory(cache: bool = True):
        rt = fe.RuntimeConfig(
            n_ctx=512,
            n_threads=1,
            image_max_tokens=64,
            embedding_cache=cache,
            embedding_cache_dir=str(tmp_path / "cache"),
        )
        opened.append(fe.load(lm.path, mmproj, runtime=rt, prune=fe.PruneConfig(strategy="none")))
        return opened[-1]

    yield factory
    for model in opened:
        model.close()


# pre-LLM selection runs on the qwen2vl pair: its image rows share one M-RoPE time position, so a
# subset decodes; on llama the kept rows' 1-D positions have gaps, which llama_decode refuses
@pytest.mark.native
@pytest.mark.parametrize(
    "pair, prune",
    [
        ("llama", {"strategy": "none"}),
        ("llama", {"strategy": "fastv", "layer": 2, "keep": 16}),
        ("qwen2vl", {"strategy": "none"}),
        ("qwen2vl", {"strategy": "divprune", "keep": 16}),
        ("qwen2vl", {"strategy": "divprune", "keep": 24}),  # another budget on the same cached encode
        ("qwen2vl", {"strategy": "fastv", "layer": 2, "keep": 8, "pre": "dart:16"}),
    ],
    ids=lambda p: p if isinstance(p, str) else "-".join(f"{v}" for v in p.values()),
)
def test_a_cached_prefill_gives_the_logits_of_an_uncached_one(load_tiny, load_qwen2vl, photos, pair, prune):
    import fastv_edge as fe

    load = load_tiny if pair == "llama" else load_qwen2vl
    prune = fe.PruneConfig(**prune)
    want, stats = prefill_logits(load(cache=False), photos["astronaut"], prune)
    assert not stats.images[0].cached
    model = load()
    prefill_logits(model, photos["astronaut"], fe.PruneConfig(strategy="none"))  # fills the cache
    got, stats = prefill_logits(model, photos["astronaut"], prune)
    assert stats.images[0].cached and stats.n_kept == (prune.keep or stats.n_image_tokens)
    np.testing.assert_array_equal(got, want)


@pytest.mark.native
def test_the_second_request_on_an_image_is_cached(load_tiny, photos):
    import fastv_edge as fe

    model = load_tiny()
    kw = dict(max_tokens=2, prune=fe.PruneConfig(strategy="none"))
    first = list(fe.stream_generate(model, "What is it?", [photos["coffee"]], **kw))
    second = list(fe.stream_generate(model, "And its colour?", [photos["coffee"]], **kw))
    (a,), (b,) = first[-1].stats.images, second[-1].stats.images
    assert (a.cached, b.cached) == (False, True)
    assert b.encode_ms < a.encode_ms and second[-1].encode_ms == b.encode_ms  # a lookup, not an encode
    assert (a.n_tokens, a.grid) == (b.n_tokens, b.grid) == (64, (8, 8))


@pytest.mark.native
def test_a_corrupt_entry_is_re_encoded_with_a_warning(load_tiny, photos, tmp_path):
    fresh = encode(load_tiny(), photos["chelsea"]).embd
    (entry,) = (tmp_path / "cache").glob("*.emb")
    blob = bytearray(entry.read_bytes())
    blob[-100] ^= 0xFF  # one damaged float
    entry.write_bytes(bytes(blob))
    model = load_tiny()  # fresh memory: the disk entry is what it finds
    with pytest.warns(RuntimeWarning, match="corrupt.*re-encoding"):
        again = encode(model, photos["chelsea"])
    assert not again.cached
    np.testing.assert_array_equal(again.embd, fresh)
    assert encode(load_tiny(), photos["chelsea"]).cached  # rewritten whole


@pytest.mark.native
def test_no_cache_reads_and_writes_nothing(load_tiny, photos, tmp_path):
    model = load_tiny(cache=False)
    assert model.embedding_cache is None
    assert not encode(model, photos["chelsea"]).cached and not encode(model, photos["chelsea"]).cached
    assert not (tmp_path / "cache").exists()


@pytest.mark.native
def test_a_new_cap_is_a_new_key(tiny_dir, photos, tmp_path):
    import fastv_edge as fe
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    lm = make_tiny_qwen2vl(tiny_dir)
    mmproj, _ = make_tiny_vision_mmproj(tiny_dir, "qwen2vl_merger", 64, out_std=0.5)
    rt = fe.RuntimeConfig(n_ctx=512, n_threads=1, embedding_cache_dir=str(tmp_path / "cache"))
    with fe.load(lm.path, mmproj, runtime=rt, prune=fe.PruneConfig(strategy="none")) as model:
        assert not encode(model, photos["astronaut"]).cached
        model.set_image_tokens(max_tokens=32)
        capped = encode(model, photos["astronaut"])
        assert not capped.cached and capped.embd.shape[0] <= 32
        assert encode(model, photos["astronaut"]).cached
        model.set_image_tokens()
        assert encode(model, photos["astronaut"]).cached  # the uncapped entry is still there


@pytest.mark.native
def test_cache_info_and_clear(load_tiny, photos, tmp_path, capsys):
    import json

    from fastv_edge.cli import main

    encode(load_tiny(), photos["chelsea"])
    encode(load_tiny(), photos["coffee"])
    folder = str(tmp_path / "cache")
    assert main(["cache", "info", "--dir", folder, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 2 and info["bytes"] > 2 * 64 * 64 * 4
    assert main(["cache", "clear", "--dir", folder]) == 0
    assert "deleted 2 entries" in capsys.readouterr().out
    assert main(["cache", "info", "--dir", folder]) == 0
    assert ": 0 entries" in capsys.readouterr().out


@pytest.mark.native
def test_the_chat_handler_encodes_a_resent_image_once(tiny, photos, tmp_path, monkeypatch):
    from llama_cpp import Llama

    import fastv_edge as fe

    monkeypatch.setenv(ENV_DIR, str(tmp_path))  # not the session's folder: other tests sent this image

    def ask(handler):
        llm.chat_handler = handler
        image = {"type": "image_url", "image_url": {"url": photos["chelsea"].as_uri()}}
        messages = [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
        llm.create_chat_completion(messages=messages, max_tokens=2, temperature=0.0)
        return handler.last_stats.images[0]

    llm = Llama(str(tiny.llama_path), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        cached = fe.FastVChatHandler(str(tiny.mmproj_path), prune=fe.PruneConfig(strategy="none"), verbose=False)
        first, second = ask(cached), ask(cached)  # a chat re-sends its image with every request
        assert (first.cached, second.cached) == (False, True)
        plain = fe.FastVChatHandler(
            str(tiny.mmproj_path), prune=fe.PruneConfig(strategy="none"), verbose=False, embedding_cache=False
        )
        assert not ask(plain).cached and not ask(plain).cached
    finally:
        llm.close()
