"""Images from http(s) URLs, with bounds: a request that never ends or never stops sending ends here.

urllib.request.urlopen without a timeout waits for ever on a server that accepts and never
answers (one chat-handler message then pins a worker), and read() takes whatever it is sent.
fetch() bounds every step: the connection and each read (TIMEOUT), the whole download
(DEADLINE: a server trickling one byte at a time stays under the read timeout), the size
(MAX_DOWNLOAD_BYTES, from Content-Length before reading and while reading), and refuses a
Content-Type that says the body is not an image. Every error is a ValueError naming the URL.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request

TIMEOUT = 10.0  # seconds to connect, and for each read
DEADLINE = 60.0  # seconds for the whole download
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024  # far above any photo a vision encoder needs
CHUNK = 64 * 1024
# a body of these types may be an image; a server that says text/html sent an error page
ACCEPTED_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


def fetch(url: str, *, timeout: float | None = None, deadline: float | None = None, max_bytes: int | None = None):
    """Download an image over http(s).

    Args:
        url: the http:// or https:// URL.
        timeout: seconds to connect and for each read (default TIMEOUT).
        deadline: seconds for the whole download (default DEADLINE).
        max_bytes: largest body accepted (default MAX_DOWNLOAD_BYTES).

    Returns:
        The body's bytes.

    Raises:
        ValueError: no answer in time, too large, not an image type, an HTTP error status or a
            network error; the message names the URL.
    """
    timeout = TIMEOUT if timeout is None else timeout
    deadline = DEADLINE if deadline is None else deadline
    max_bytes = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes
    request = urllib.request.Request(url, headers={"User-Agent": "fastv-edge", "Accept": "image/*"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's URL
            _check_headers(url, response, max_bytes)
            return _read_body(url, response, start, deadline, max_bytes)
    except urllib.error.HTTPError as e:
        raise ValueError(f"could not fetch image {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        raise ValueError(f"could not fetch image {url}: {reason}") from None
    except TimeoutError:
        raise ValueError(f"could not fetch image {url}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as e:
        raise ValueError(f"could not fetch image {url}: {type(e).__name__}: {e}") from None


def _check_headers(url: str, response, max_bytes: int) -> None:
    declared = response.headers.get("Content-Type")
    kind = response.headers.get_content_type()
    if declared and not kind.startswith(ACCEPTED_TYPES):
        raise ValueError(f"could not fetch image {url}: the server sent {kind!r}, not an image")
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise ValueError(f"could not fetch image {url}: it is {int(length)} bytes, more than the limit of {max_bytes}")


def _read_body(url: str, response, start: float, deadline: float, max_bytes: int) -> bytes:
    chunks, total = [], 0
    while True:
        if time.monotonic() - start > deadline:
            raise ValueError(f"could not fetch image {url}: the download took longer than {deadline:g} s")
        chunk = response.read1(CHUNK)  # what has arrived, up to CHUNK: read() would wait for all of it
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise ValueError(f"could not fetch image {url}: it sent more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
