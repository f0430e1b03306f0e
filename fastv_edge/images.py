"""Image loading and validation, done in Python before anything reaches C.

Images are decoded with Pillow and handed to mtmd as raw RGB (mtmd_bitmap_init), so the
C image decoder never parses untrusted bytes. Every failure is a ValueError naming the file
(or URL). Limits: MAX_PIXELS per image (read from the header, before decoding), and
MAX_REQUEST_PIXELS for all the images of one request (load_images): several images that are
small on disk but large decoded cannot take gigabytes together. http(s) downloads are
bounded in time and size (fetch.py).
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
# one request's images together: 192 MB of RGB, copied twice more on the way into mtmd
MAX_REQUEST_PIXELS = 64_000_000


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
        (bytes, name) where name is used in error messages (the path or URL).

    Raises:
        ValueError: missing, a directory, too large, or a download that failed (fetch.fetch).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"an image is a path, a URL, a data: URI, bytes or an RGBImage, got {type(source).__name__}")
    text = os.fspath(source)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith("data:"):
        return _read_data_uri(text), "<data URI>"
    if text.startswith(("http://", "https://")):
        from .fetch import fetch

        return fetch(text), text
    origin = ""
    if text.startswith("file://"):
        origin, text = f" (from {text})", urllib.request.url2pathname(urllib.parse.urlparse(text).path)
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"image {path} is a directory, not an image file{origin}")
    if not path.is_file():
        raise ValueError(f"image not found: {path}{origin}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"image file too large ({size} bytes > {MAX_BYTES}): {path}{origin}")
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


def decode(data: bytes, name: str = "<image>", max_pixels: int = MAX_PIXELS, *, budget: int | None = None) -> RGBImage:
    """Decode and validate image bytes into RGB.

    Args:
        data: encoded image (any format Pillow reads).
        name: shown in error messages.
        max_pixels: refuse images with more pixels than this (decompression bombs).
        budget: pixels the request has left (load_images); None: no request limit.

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
            _check_size(name, nx, ny, max_pixels, budget)
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


def _check_size(name: str, nx: int, ny: int, max_pixels: int, budget: int | None) -> None:
    if nx < 1 or ny < 1:
        raise ValueError(f"{name}: image has an empty size {nx}x{ny}")
    if nx > MAX_SIDE or ny > MAX_SIDE:
        raise ValueError(f"{name}: image is {nx}x{ny}, a side longer than {MAX_SIDE} pixels; resize it first")
    if nx * ny > max_pixels:
        raise ValueError(
            f"{name}: image is {nx}x{ny} = {nx * ny} pixels, more than the limit of "
            f"{max_pixels} (possible decompression bomb); resize it first"
        )
    if budget is not None and nx * ny > budget:
        raise ValueError(
            f"{name}: image is {nx}x{ny} = {nx * ny} pixels, but the request's images may have "
            f"{MAX_REQUEST_PIXELS} pixels together and only {budget} are left; send fewer or smaller images"
        )


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


def load_images(sources, *, max_pixels: int = MAX_PIXELS, max_total: int = MAX_REQUEST_PIXELS) -> list[RGBImage]:
    """The images of one request, decoded, within a pixel budget for all of them.

    Each image's size is read from its header before it is decoded, so the request is refused
    before the image that would take it past max_total takes any memory. RGBImage objects are
    decoded already: they are checked against max_pixels only.

    Args:
        sources: paths, file:// URLs, data: URIs, http(s) URLs, bytes or RGBImage objects.
        max_pixels: limit per image (decompression bombs).
        max_total: limit for all of them together.

    Returns:
        The RGBImages, in order; images named only by their kind ('<data URI>', '<bytes>') are
        called 'image N (<data URI>)' in errors and statistics.

    Raises:
        ValueError: an image that cannot be read or decoded, or the budget exceeded.
    """
    images, left = [], max_total
    for i, source in enumerate(sources, 1):
        if isinstance(source, RGBImage):  # decoded already (a chat's earlier turns): not this request's memory
            _check_size(source.name, source.nx, source.ny, max_pixels, None)
            images.append(source)
            continue
        data, name = read_source(source)
        name = f"image {i} ({name})" if name.startswith("<") else name
        img = decode(data, name, max_pixels, budget=left)
        left -= img.nx * img.ny
        images.append(img)
    return images
