"""The on-disk half of the image-embedding cache: one checksummed file per entry, LRU-bounded.

An entry file is

    b"FVEMBED1" | u32 header length | header (JSON: key, shape, dtype, meta) | float32 rows | blake2b-256

where the trailing digest covers everything before it. A file is written under a temporary name
in the same folder and renamed into place (os.replace is atomic on POSIX and Windows), so a reader
sees a whole entry or none, and two processes writing one key leave one whole entry (the later).
A digest, magic, key or size mismatch (a torn write after a crash, a truncated copy, bit rot)
makes the entry a miss: it is reported with a RuntimeWarning, deleted and re-encoded; its rows
are never decoded. A hit sets the file's mtime to now; after a write, the least recently used
entries are deleted until the folder is within its size limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
import warnings
from pathlib import Path

import numpy as np

MAGIC = b"FVEMBED1"
SUFFIX = ".emb"
DIGEST_SIZE = 32
_LEN = struct.Struct("<I")
_STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # its folder is gone or not a folder: nothing to remove


class CorruptEntry(Exception):
    """An entry file that must not be decoded; the message says what is wrong."""


def encode_entry(key: str, embd: np.ndarray, meta: dict) -> bytes:
    """The bytes of an entry file for `embd` (float32 rows) under `key`."""
    rows = np.ascontiguousarray(embd, dtype=np.float32)  # (n_tokens, n_embd)
    header = json.dumps({"key": key, "shape": list(rows.shape), "dtype": "<f4", "meta": meta}).encode()
    body = MAGIC + _LEN.pack(len(header)) + header + rows.astype("<f4", copy=False).tobytes()
    return body + hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest()


def decode_entry(blob: bytes, key: str, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """The rows and meta of an entry file, after checking every byte of it.

    Args:
        blob: the file's bytes.
        key: the key it must hold.
        shape: (n_tokens, n_embd) the caller expects.

    Returns:
        (read-only float32 rows of `shape`, meta).

    Raises:
        CorruptEntry: truncated, a bad magic or checksum, another key or shape.
    """
    start = len(MAGIC) + _LEN.size
    if len(blob) < start + DIGEST_SIZE:
        raise CorruptEntry(f"truncated ({len(blob)} bytes)")
    if blob[: len(MAGIC)] != MAGIC:
        raise CorruptEntry("not an embedding entry (bad magic)")
    body, digest = blob[:-DIGEST_SIZE], blob[-DIGEST_SIZE:]
    if hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest() != digest:
        raise CorruptEntry("checksum mismatch (truncated or damaged)")
    (n_header,) = _LEN.unpack_from(blob, len(MAGIC))
    try:
        header = json.loads(body[start : start + n_header])
    except ValueError as e:
        raise CorruptEntry(f"unreadable header ({e})") from None
    if header.get("key") != key or header.get("dtype") != "<f4":
        raise CorruptEntry("holds another key or type")
    if tuple(header.get("shape", ())) != tuple(shape):
        raise CorruptEntry(f"holds {header.get('shape')} rows, the image needs {list(shape)}")
    payload = memoryview(body)[start + n_header :]
    if len(payload) != shape[0] * shape[1] * 4:
        raise CorruptEntry("row data of the wrong size")
    return np.frombuffer(payload, dtype="<f4").reshape(shape), header.get("meta", {})  # (n_tokens, n_embd)


class DiskStore:
    """Entry files in one folder, bounded by max_bytes (least recently used evicted first).

    Args:
        root: the folder (created on the first write).
        max_bytes: size limit of all entries together.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.writable = True  # turned off after a failed write (read-only or full disk): warn once
        self._lock = threading.Lock()
        self._last_ns = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"

    def read(self, key: str, shape: tuple[int, int]) -> tuple[np.ndarray, dict] | None:
        """The entry's rows and meta, or None (absent, or corrupt: then warned about and deleted)."""
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            warnings.warn(f"embedding cache: cannot read {path} ({e}); encoding the image", RuntimeWarning, 3)
            return None
        try:
            rows, meta = decode_entry(blob, key, shape)
        except CorruptEntry as e:
            message = f"embedding cache: entry {path.name} is corrupt: {e}; re-encoding the image"
            warnings.warn(message, RuntimeWarning, 3)
            _remove(path)
            return None
        self._touch(path)
        return rows, meta

    def write(self, key: str, embd: np.ndarray, meta: dict) -> bool:
        """Store an entry atomically, then evict down to the limit. Returns False when not stored."""
        blob = encode_entry(key, embd, meta)
        if not self.writable or len(blob) > self.max_bytes:
            return False
        path = self.path(key)
        tmp = self.root / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        except OSError as e:
            _remove(tmp)
            self.writable = False
            warnings.warn(f"embedding cache: cannot write to {self.root} ({e}); not caching on disk", RuntimeWarning, 3)
            return False
        self._touch(path)
        self.evict(keep=path)
        return True

    def _touch(self, path: Path) -> None:
        # strictly increasing within a process, so two uses in one clock tick keep their order
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            now = self._last_ns
        try:
            os.utime(path, ns=(now, now))
        except OSError:
            pass  # deleted by another process meanwhile, or a read-only store

    def entries(self) -> list[tuple[Path, int, int]]:
        """(path, size, mtime_ns) of every entry, least recently used first."""
        out = []
        try:
            names = list(os.scandir(self.root))
        except OSError:  # not created yet, or unreadable
            return []
        for entry in names:
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                try:
                    st = entry.stat()
                except OSError:  # deleted meanwhile by another process
                    continue
                out.append((Path(entry.path), st.st_size, st.st_mtime_ns))
        return sorted(out, key=lambda e: (e[2], e[0].name))

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used entries until the total is within max_bytes; returns how many."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        n = 0
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            _remove(path)
            total -= size
            n += 1
        return n

    def info(self) -> dict:
        """Folder, entry count, bytes used and the limit."""
        entries = self.entries()
        return {
            "dir": str(self.root),
            "entries": len(entries),
            "bytes": sum(size for _, size, _ in entries),
            "max_bytes": self.max_bytes,
        }

    def clear(self) -> tuple[int, int]:
        """Delete every entry and stale temporary file; returns (entries deleted, bytes freed)."""
        n = freed = 0
        for path, size, _ in self.entries():
            path.unlink(missing_ok=True)
            n, freed = n + 1, freed + size
        if self.root.is_dir():
            for tmp in self.root.glob(".*.tmp"):
                try:
                    if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
                        tmp.unlink()
                except FileNotFoundError:
                    pass
        return n, freed
