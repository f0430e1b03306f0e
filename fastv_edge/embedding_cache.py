"""The image-embedding cache: an image is encoded once per (pixels, mmproj, preprocessing, build).

    cache = EmbeddingCache()                      # memory LRU for one model + the shared disk store
    keys = EncoderKeys(mmproj_path, {"image_max_tokens": 256, ...})
    rows = cache.get(keys.key(piece), shape)      # None on a miss
    rows = cache.put(keys.key(piece), rows, meta) # read-only from now on

Key ingredients (EncoderKeys.key), hashed together with blake2b:
- the image: a digest of its decoded RGB bytes and size (pixel_digest), so the same picture from
  a path, a data: URI or bytes hits, and an edited one does not;
- the mmproj: a blake2b digest of the whole file. It is computed on the first image a file
  version meets (about 1.5 s of CPU per GiB on this project's machine) and remembered by (path,
  device, inode, size, mtime) in this process and in the cache folder, so later loads and
  processes pay nothing. A path + mtime key alone would miss for a copy of the same file and
  could hit for a file rewritten in place within one mtime tick;
- the preprocessing: the image-token caps (when the projector honours them), flash attention and
  the GPU switch (they change the rows' rounding);
- the library: the native build's key (native_info: the llama.cpp source, patches and CPU flags).
The token count and grid mtmd gave the image are part of the key too, as a last check.

Rows are stored as float32 exactly as mtmd wrote them, so a hit is bit-identical to an encode.
Disk: $FASTV_EDGE_EMBEDDING_CACHE or ~/.cache/fastv-edge/embeddings, at most
$FASTV_EDGE_EMBEDDING_CACHE_MAX_MB (default 2048) MiB; see embedding_store for the file format.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .embedding_store import DiskStore

ENV_DIR = "FASTV_EDGE_EMBEDDING_CACHE"
ENV_MAX_MB = "FASTV_EDGE_EMBEDDING_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
DEFAULT_MEMORY_BYTES = 256 * 2**20  # per model
KEY_VERSION = 1  # bump when an ingredient or the row layout changes
_IDS = "mmproj-ids"  # content digests of mmproj files, by their stat


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The disk store's folder: override, else $FASTV_EDGE_EMBEDDING_CACHE, else ~/.cache/fastv-edge/embeddings."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastv-edge" / "embeddings"


def max_disk_bytes() -> int:
    """The disk store's size limit: $FASTV_EDGE_EMBEDDING_CACHE_MAX_MB MiB (default 2048).

    Raises:
        ValueError: the variable is not a number >= 0.
    """
    raw = os.environ.get(ENV_MAX_MB, str(DEFAULT_MAX_MB))
    try:
        mib = float(raw)
    except ValueError:
        mib = -1.0
    if mib < 0:
        raise ValueError(f"{ENV_MAX_MB} must be a number of MiB >= 0, got {raw!r}")
    return int(mib * 2**20)


def pixel_digest(nx: int, ny: int, rgb: bytes) -> str:
    """blake2b-256 of an image's size and decoded RGB bytes (its identity in a cache key)."""
    h = hashlib.blake2b(digest_size=32)
    h.update(f"rgb8:{nx}x{ny}:".encode())
    h.update(rgb)
    return h.hexdigest()


_file_ids: dict[tuple, str] = {}
_file_ids_lock = threading.Lock()


def file_identity(path: str | os.PathLike, memo_dir: Path | None = None) -> str:
    """A content digest of a file (blake2b-256), computed once per file version.

    Args:
        path: the file.
        memo_dir: a folder remembering digests across processes, by (path, device, inode, size, mtime).

    Returns:
        The hex digest.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _file_ids_lock:
        if stamp in _file_ids:
            return _file_ids[stamp]
    memo = None
    if memo_dir is not None:
        memo = memo_dir / hashlib.blake2b(repr(stamp).encode(), digest_size=16).hexdigest()
        try:
            digest = memo.read_text().strip()
            if len(digest) == 64:
                _file_ids[stamp] = digest
                return digest
        except OSError:
            pass
    h = hashlib.blake2b(digest_size=32)
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _file_ids_lock:
        _file_ids[stamp] = digest
    if memo is not None:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(digest)
            os.replace(tmp, memo)
        except OSError:
            pass  # a read-only cache folder: the digest is recomputed next process
    return digest


def library_key() -> str:
    """The native build's key (llama.cpp source, patches, CPU flags), or the library file's stamp."""
    from .native_info import native_info

    info = native_info()
    build = info.get("build") or {}
    if build.get("build_key"):
        return f"build:{build['build_key']}"
    lib = info.get("lib_path")
    if lib and os.path.exists(lib):
        st = os.stat(lib)
        return f"lib:{info.get('llama_cpp_python_version')}:{st.st_size}:{st.st_mtime_ns}"
    return f"lib:{info.get('llama_cpp_python_version')}"


def preprocessing(runtime, caps_honoured: bool) -> dict:
    """The settings besides the pixels and the mmproj that decide an image's rows.

    Args:
        runtime: the model's RuntimeConfig.
        caps_honoured: the projector applies the image-token caps (else they are left out of the
            key, so trying caps on a fixed-resolution model shares its entries).

    Returns:
        A JSON-serialisable dict.
    """
    return {
        "image_min_tokens": runtime.image_min_tokens if caps_honoured else None,
        "image_max_tokens": runtime.image_max_tokens if caps_honoured else None,
        "flash_attn": bool(runtime.flash_attn),
        "gpu": runtime.n_gpu_layers != 0,
    }


class EncoderKeys:
    """The cache key of each image an encoder sees: its pixels + this encoder's fixed ingredients.

    Args:
        mmproj_path: the mmproj GGUF (its content digest is computed on the first key).
        preprocessing: what else decides the rows (caps, flash attention, GPU), JSON-serialisable.
        memo_dir: where file_identity remembers mmproj digests (None: in this process only).
    """

    def __init__(self, mmproj_path: str | os.PathLike, preprocessing: dict, memo_dir: Path | None = None):
        self.mmproj_path = os.fspath(mmproj_path)
        self.preprocessing = dict(preprocessing)
        self.memo_dir = memo_dir
        self._fixed: str | None = None

    def _fixed_part(self) -> str:
        if self._fixed is None:
            self._fixed = json.dumps(
                {
                    "version": KEY_VERSION,
                    "mmproj": file_identity(self.mmproj_path, self.memo_dir),
                    "preprocessing": self.preprocessing,
                    "library": library_key(),
                },
                sort_keys=True,
            )
        return self._fixed

    def key(self, piece) -> str:
        """The key of an ImagePiece (its digest, token count and grid) under this encoder."""
        image = {"pixels": piece.digest, "n_tokens": piece.n_tokens, "grid": piece.grid}
        blob = self._fixed_part() + json.dumps(image, sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()


class EmbeddingCache:
    """An in-memory LRU (one per model) in front of the shared disk store.

    Args:
        directory: the disk store's folder (None: cache_dir()).
        disk: use the disk store at all.
        max_bytes: the disk limit (None: max_disk_bytes()).
        memory_bytes: the memory LRU's limit.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        *,
        disk: bool = True,
        max_bytes: int | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ):
        self.root = cache_dir(directory)
        self.store = DiskStore(self.root, max_disk_bytes() if max_bytes is None else max_bytes) if disk else None
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_used = 0
        self._lock = threading.Lock()
        self.hits_memory = self.hits_disk = self.misses = 0

    @property
    def memo_dir(self) -> Path | None:
        """Where mmproj content digests are remembered (inside the disk store's folder)."""
        return self.root / _IDS if self.store is not None else None

    def get(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The rows stored under key (read-only float32 of `shape`), or None."""
        with self._lock:
            rows = self._memory.get(key)
            if rows is not None and rows.shape == tuple(shape):
                self._memory.move_to_end(key)
                self.hits_memory += 1
                return rows
        found = self.store.read(key, shape) if self.store is not None else None
        if found is None:
            self.misses += 1
            return None
        self.hits_disk += 1
        self._remember(key, found[0])
        return found[0]

    def contains(self, key: str) -> bool:
        """True when get(key) would find an entry (memory or disk), without reading it (the TTFT planner asks)."""
        with self._lock:
            if key in self._memory:
                return True
        return self.store is not None and self.store.path(key).is_file()

    def put(self, key: str, rows: np.ndarray, meta: dict) -> np.ndarray:
        """Store freshly encoded rows; returns them read-only (a later hit returns the same values).

        Args:
            key: from EncoderKeys.key.
            rows: (n_tokens, n_embd) float32.
            meta: JSON-serialisable facts kept with the entry (name, grid, encode_ms).
        """
        rows = np.ascontiguousarray(rows, dtype=np.float32)  # (n_tokens, n_embd)
        rows.setflags(write=False)  # shared by every request that hits: nobody may write into it
        self._remember(key, rows)
        if self.store is not None:
            self.store.write(key, rows, meta)
        return rows

    def _remember(self, key: str, rows: np.ndarray) -> None:
        if rows.nbytes > self.memory_bytes:
            return
        with self._lock:
            old = self._memory.pop(key, None)
            self._memory_used -= old.nbytes if old is not None else 0
            self._memory[key] = rows
            self._memory_used += rows.nbytes
            while self._memory_used > self.memory_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._memory_used -= dropped.nbytes

    def clear_memory(self) -> None:
        """Forget the in-memory entries (the disk store keeps its own)."""
        with self._lock:
            self._memory.clear()
            self._memory_used = 0
