"""Image loading and validation, done in Python before anything reaches C.

Images are decoded with Pillow and handed to mtmd as raw RGB (mtmd_bitmap_init), so the
C image decoder never parses untrusted bytes. Every failure is a ValueError naming the file.
"""

from __future__ import annotations

import base64
import binascii
import io
import operator
import os
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# 40 megapixels is a 7000x5700 photo: far above any vision encoder's input, far below the
# ~1 GB of RGB a decompression bomb would allocate.
MAX_PIXELS = 40_000_000
MAX_BYTES = 200 * 1024 * 1024
MAX_SIDE = 1 << 16  # mtmd's resize arithmetic stays far from int overflow below this


@dataclass(frozen=True)
class RGBImage:
    """A decoded image: width nx, height ny, and nx*ny*3 bytes of RGB (row-major).

    Checked on construction, since mtmd copies nx*ny*3 bytes from `data` without knowing its
    length: sizes are integers in [1, MAX_SIDE], `data` is bytes-like of exactly that length
    (a bytearray or memoryview is copied into bytes), `name` a string.

    Raises:
        ValueError: any of these does not hold.
    """

    nx: int
    ny: int
    data: bytes
    name: str = "<image>"

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ValueError(f"RGBImage name must be a string, got {type(self.name).__name__}")
        for axis in ("nx", "ny"):
            n = getattr(self, axis)
            try:
                size = None if isinstance(n, bool) else operator.index(n)  # int, numpy integers
            except TypeError:
                size = None
            if size is None or not 1 <= size <= MAX_SIDE:
                raise ValueError(f"{self.name}: RGBImage {axis} must be an integer in [1, {MAX_SIDE}], got {n!r}")
            object.__setattr__(self, axis, size)
        if isinstance(self.data, (bytearray, memoryview)):
            object.__setattr__(self, "data", bytes(self.data))
        if not isinstance(self.data, bytes):
            raise ValueError(f"{self.name}: RGBImage data must be bytes, got {type(self.data).__name__}")
        if len(self.data) != self.nx * self.ny * 3:
            raise ValueError(
                f"{self.name}: RGBImage data has {len(self.data)} bytes, but {self.nx}x{self.ny} RGB needs "
                f"{self.nx * self.ny * 3} (nx * ny * 3)"
            )


def read_source(source: str | os.PathLike | bytes) -> tuple[bytes, str]:
    """Raw bytes of an image given as a path, a file:// URL, a data: URI, http(s) URL or bytes.

    Args:
        source: where the image comes from.

    Returns:
        (bytes, name) where name is used in error messages.
    """
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "<bytes>"
    text = os.fspath(source)
    if text.startswith("data:"):
        return _read_data_uri(text), "<data URI>"
    if text.startswith("file://"):
        text = urllib.request.url2pathname(urllib.parse.urlparse(text).path)
    elif text.startswith(("http://", "https://")):
        # same behaviour as llama-cpp-python's handlers; offline installs will fail here
        with urllib.request.urlopen(text) as response:  # noqa: S310 - explicit user URL
            return response.read(MAX_BYTES + 1), text
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"image not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"image file too large ({path.stat().st_size} bytes > {MAX_BYTES}): {path}")
    return path.read_bytes(), str(path)


def _read_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ValueError("data URI has no ',' separating the header from the image data")
    if ";base64" not in header:
        raise ValueError(f"only base64 data URIs are supported, got header {header[:40]!r}")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"data URI is not valid base64: {e}") from e


def decode(data: bytes, name: str = "<image>", max_pixels: int = MAX_PIXELS) -> RGBImage:
    """Decode and validate image bytes into RGB.

    Args:
        data: encoded image (any format Pillow reads).
        name: shown in error messages.
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Returns:
        The decoded RGBImage.

    Raises:
        ValueError: not an image, truncated or corrupt, or too many pixels.
    """
    if len(data) > MAX_BYTES:
        raise ValueError(f"{name}: image too large ({len(data)} bytes > {MAX_BYTES})")
    try:
        with warnings.catch_warnings():
            # the pixel check below replaces Pillow's bomb warning with a clear error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            nx, ny = img.size  # read from the header: nothing decoded yet
            if nx < 1 or ny < 1:
                raise ValueError(f"{name}: image has an empty size {nx}x{ny}")
            if nx * ny > max_pixels:
                raise ValueError(
                    f"{name}: image is {nx}x{ny} = {nx * ny} pixels, more than the limit of "
                    f"{max_pixels} (possible decompression bomb); resize it first"
                )
            img.load()
            rgb = img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name}: image too large (decompression bomb): {e}") from e
    except UnidentifiedImageError as e:
        raise ValueError(f"{name}: not an image (Pillow cannot identify the format)") from e
    except OSError as e:
        raise ValueError(f"{name}: image is truncated or corrupt: {e}") from e
    except (SyntaxError, EOFError) as e:  # some Pillow plugins report bad headers this way
        raise ValueError(f"{name}: image is corrupt: {e}") from e
    return RGBImage(nx=rgb.width, ny=rgb.height, data=rgb.tobytes(), name=name)


def load_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> RGBImage:
    """Read and decode an image from a path, file:// URL, data: URI, http(s) URL or bytes.

    Args:
        source: the image.
        max_pixels: pixel limit, see decode().

    Returns:
        The decoded RGBImage.
    """
    data, name = read_source(source)
    return decode(data, name, max_pixels)
