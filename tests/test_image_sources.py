"""Images from the network and many images at once: bounded in time, size and memory, errors naming the URL.

Real sockets on loopback: a server that accepts and never answers, one that sends more than
any image, one that trickles a byte at a time, one that answers with a web page, one that
refuses. Before, urlopen had no timeout (the first hung for ever, also in the chat handler),
read everything, and its errors did not name the URL. Each call runs in a watchdog thread,
so a hang fails the test in seconds instead of stalling the run.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from api_helpers import bounded
from PIL import Image

import fastv_edge as fe
from fastv_edge import fetch
from fastv_edge.images import MAX_REQUEST_PIXELS, load_image, load_images

WATCHDOG = 15.0  # seconds before a call counts as hung


def png(nx: int = 16, ny: int = 12, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (nx, ny), color).save(out, "PNG")
    return out.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        route = getattr(self, "route_" + self.path.strip("/"), None)
        if route is None:
            self.send_error(404, "no such image")
            return
        try:
            route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def _start(self, kind: str, length: int | None = None):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def route_photo(self):
        body = png()
        self._start("image/png", len(body))
        self.wfile.write(body)

    def route_page(self):
        body = b"<html>not found, sorry</html>"
        self._start("text/html; charset=utf-8", len(body))
        self.wfile.write(body)

    def route_declared_huge(self):
        self._start("image/png", 10**10)

    def route_endless(self):
        self._start("image/png")
        while True:
            self.wfile.write(b"\0" * 65536)

    def route_trickle(self):
        self._start("image/png")
        for _ in range(10_000):
            self.wfile.write(b"\x89")
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def silent():
    """A server that accepts connections and never sends a byte."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/photo.png"
    stop.set()
    for conn in held:
        conn.close()
    sock.close()


@pytest.fixture
def fast_limits(monkeypatch):
    monkeypatch.setattr(fetch, "TIMEOUT", 0.5)
    monkeypatch.setattr(fetch, "DEADLINE", 1.5)
    monkeypatch.setattr(fetch, "MAX_DOWNLOAD_BYTES", 1 << 20)


def test_a_good_url_loads(server, fast_limits):
    img, _ = bounded(load_image, server + "/photo", limit=WATCHDOG)
    assert (img.nx, img.ny, img.name) == (16, 12, server + "/photo")


@pytest.mark.parametrize(
    "path, message",
    [
        ("/page", "the server sent 'text/html', not an image"),
        ("/declared_huge", "it is 10000000000 bytes, more than the limit of 1048576"),
        ("/endless", "it sent more than the limit of 1048576 bytes"),
        ("/trickle", "the download took longer than 1.5 s"),
        ("/nothing-here", "HTTP 404"),
    ],
)
def test_bad_servers_give_one_line_errors_naming_the_url(server, fast_limits, path, message):
    err, seconds = bounded(load_image, server + path, limit=WATCHDOG)
    assert isinstance(err, ValueError) and message in str(err) and server + path in str(err), err
    assert "\n" not in str(err) and seconds < 5


def test_a_server_that_never_answers_times_out(silent, fast_limits):
    err, seconds = bounded(load_image, silent, limit=WATCHDOG)
    assert isinstance(err, ValueError), err
    assert f"could not fetch image {silent}: no answer within 0.5 s" == str(err) and seconds < 5


def test_a_refused_connection_names_the_url(fast_limits):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.png"
    sock.close()  # nothing listens there now
    err, _ = bounded(load_image, url, limit=WATCHDOG)
    assert isinstance(err, ValueError) and str(err).startswith(f"could not fetch image {url}: "), err


def test_file_urls_and_directories_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"image not found: .*nope.png \(from file://.*nope.png\)"):
        load_image((tmp_path / "nope.png").as_uri())
    with pytest.raises(ValueError, match=r"is a directory, not an image file"):
        load_image(tmp_path)


def test_images_without_a_name_are_numbered():
    uri = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    with pytest.raises(ValueError, match=r"^image 2 \(<data URI>\): not an image"):
        load_images([png(), uri])


def test_a_request_has_one_pixel_budget(tmp_path, monkeypatch):
    """Three 1-megapixel PNGs of a few KB in a 2.5-megapixel budget: the third is refused before it is decoded."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"big{i}.png")
        paths[-1].write_bytes(png(1000, 1000, (i, 0, 0)))
    assert sum(p.stat().st_size for p in paths) < 100_000
    decoded = []
    monkeypatch.setattr(
        Image.Image, "convert", lambda self, *a, f=Image.Image.convert: decoded.append(1) or f(self, *a)
    )
    with pytest.raises(ValueError, match=r"big2.png: image is 1000x1000 .* 500000 are left"):
        load_images(paths, max_total=2_500_000)
    assert len(decoded) == 2 and len(load_images(paths[:2], max_total=2_500_000)) == 2
    assert MAX_REQUEST_PIXELS == 64_000_000  # the default: 192 MB of RGB per request


@pytest.mark.native
def test_generate_and_the_handler_use_the_bounds(tiny, tiny_model, silent, fast_limits, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png(6000, 6000))
    err, _ = bounded(fe.generate, tiny_model, "hi", [big, big], max_tokens=1, limit=WATCHDOG)
    assert isinstance(err, ValueError) and "pixels together" in str(err), err
    err, _ = bounded(fe.generate, tiny_model, "hi", [silent], max_tokens=1, limit=WATCHDOG)
    assert isinstance(err, ValueError) and silent in str(err), err
    import llama_cpp

    from fastv_edge.handler import FastVChatHandler

    handler = FastVChatHandler(clip_model_path=str(tiny.mmproj_path), verbose=False)
    llm = llama_cpp.Llama(str(tiny.llama_path), n_ctx=512, n_threads=1, chat_handler=handler, verbose=False)
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": silent}}]}
    try:
        err, seconds = bounded(llm.create_chat_completion, messages=[message], max_tokens=1, limit=WATCHDOG)
    finally:
        llm.close()
    assert isinstance(err, ValueError) and f"could not fetch image {silent}" in str(err) and seconds < 5, err
