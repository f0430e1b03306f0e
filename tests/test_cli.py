"""`fastv-edge` end to end through subprocesses and the real library: run, chat over stdin, info,
pull, errors. Flag parsing and output formats are tested in-process in test_cli_inprocess.py."""

import hashlib
import http.server
import json
import threading

import pytest
from api_helpers import needs_fastv, run_cli

pytestmark = pytest.mark.native


def tiny_args(tiny):
    return ["-m", tiny.llama_path, "--mmproj", tiny.mmproj_path, "-c", "512", "-t", "1"]


@pytest.mark.slow
def test_run_streams_the_answer_then_one_statistics_line(cli_env, tiny, photos):
    out = run_cli(
        cli_env,
        "run",
        *tiny_args(tiny),
        "--image",
        photos["astronaut"],
        "-p",
        "What is this?",
        "-n",
        "4",
        "--strategy",
        "none",
        "--quiet",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and out.stderr == ""  # --quiet: the answer only
    out = run_cli(
        cli_env,
        "run",
        *tiny_args(tiny),
        "--image",
        photos["astronaut"],
        "-p",
        "What is this?",
        "-n",
        "4",
        "--strategy",
        "none",
    )
    stats = [line for line in out.stderr.splitlines() if line.startswith("[kept")]
    assert len(stats) == 1 and "64/64" in stats[0] and "FLOPs ratio 1.00" in stats[0]


@needs_fastv
@pytest.mark.slow
def test_run_json_reports_pruning(cli_env, tiny, photos):
    out = run_cli(
        cli_env,
        "run",
        *tiny_args(tiny),
        "--image",
        photos["chelsea"],
        "-p",
        "What is this?",
        "-n",
        "3",
        "-k",
        "2",
        "-r",
        "0.5",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["n_image_tokens"], report["n_kept"]) == (64, 32)
    assert report["prune"] == {
        "layer": 2,
        "drop_ratio": 0.5,
        "keep": None,
        "strategy": "fastv",
        "seed": 0,
        "pre": None,
        "relevance_weight": 0.5,
    }
    assert 0 < report["flops_ratio"] < 1 and report["generation_tokens"] == 3


@pytest.mark.slow
def test_chat_over_piped_stdin(cli_env, tiny, photos):
    script = "\n".join(
        [
            f"/image {photos['astronaut']}",
            "Describe it.",
            "/stats",
            "Anything else?",
            "/reset",
            "/stats",
            "/image /no/such.png",
            "/bogus",
            "/quit",
            "never read",
        ]
    )
    out = run_cli(cli_env, "chat", *tiny_args(tiny), "-n", "3", "--strategy", "none", stdin=script + "\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("[image attached: ") and "(512x512)" in lines[0]
    assert any(line.startswith("[kept 64/64") for line in lines)
    assert any(
        line.startswith("[conversation: 1 turns, 1 images | kept 64/64") and "[context " in line for line in lines
    )
    assert "[conversation cleared]" in lines
    assert any(line.startswith("[no answer yet") for line in lines)
    assert any("unknown command /bogus" in line for line in lines)
    assert "image not found: /no/such.png" in out.stderr  # an error in the loop does not end it


def test_errors_are_one_line_with_exit_1(cli_env, tmp_path):
    missing = tmp_path / "missing.gguf"
    out = run_cli(cli_env, "run", "-m", missing, "-p", "hi")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"fastv-edge: error: model not found: {missing}"]
    debug = run_cli(cli_env, "run", "-m", missing, "-p", "hi", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@needs_fastv
@pytest.mark.slow
def test_info_json(cli_env, tiny):
    out = run_cli(cli_env, "info", "-m", tiny.llama_path, "--mmproj", tiny.mmproj_path, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["architecture"], info["layers"], info["n_embd"]) == ("llama", 4, 64)
    assert info["image_tokens_per_image"] == 64 and info["quantization"] == "ALL_F32"
    assert info["chat_template"] == "gguf" and info["fastv_architecture"] == "supported"
    assert info["fastv_symbols"] == "present"  # make test runs on the patched build


@pytest.fixture
def fake_hub(tiny):
    """A loopback server answering huggingface_hub's HEAD/GET resolve requests.

    It serves the tiny GGUF pair under the smolvlm-256m preset's file names.
    """
    from fastv_edge.templates import get_preset

    preset = get_preset("smolvlm-256m")
    files = {preset.model_file: tiny.llama_path.read_bytes(), preset.mmproj_file: tiny.mmproj_path.read_bytes()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _headers(self):
            data = files.get(self.path.rsplit("/", 1)[-1])
            if data is None or "/resolve/" not in self.path:
                self.send_response(404)
                self.end_headers()
                return None
            self.send_response(200)
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return data

        def do_HEAD(self):
            self._headers()

        def do_GET(self):
            data = self._headers()
            if data is not None:
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.mark.slow
def test_pull_downloads_into_the_hub_cache_then_run_uses_the_preset(cli_env, fake_hub, tmp_path, photos):
    # TQDM_POSITION=-1: huggingface_hub shows its bars even though stderr is not a terminal
    env = {
        **cli_env,
        "HF_ENDPOINT": fake_hub,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TQDM_POSITION": "-1",
    }
    out = run_cli(env, "pull", "smolvlm-256m")
    assert out.returncode == 0, out.stderr
    assert "models--ggml-org--SmolVLM-256M-Instruct-GGUF" in out.stdout
    assert "100%" in out.stderr  # huggingface_hub's progress bar
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    again = run_cli(offline, "pull", "smolvlm-256m", "--quiet")  # a filled cache needs no network
    assert again.returncode == 0 and again.stdout == out.stdout
    run = run_cli(
        offline,
        "run",
        "-m",
        "smolvlm-256m",
        "--image",
        photos["coffee"],
        "-p",
        "Hi",
        "-n",
        "2",
        "-c",
        "512",
        "--strategy",
        "none",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["n_image_tokens"] == 64


@pytest.mark.slow
def test_pull_and_load_fail_cleanly_without_the_files(cli_env, tmp_path):
    env = {**cli_env, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    out = run_cli(env, "pull", "smolvlm-256m", "--quiet")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    out = run_cli(env, "run", "-m", "smolvlm-256m", "-p", "hi")
    assert out.returncode == 1
    expected = "fastv-edge: error: preset 'smolvlm-256m' is not downloaded; run: fastv-edge pull smolvlm-256m"
    assert out.stderr.strip() == expected
    out = run_cli(env, "pull", "no-such-preset")
    assert out.returncode == 1 and "unknown preset 'no-such-preset'" in out.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_answer_not_the_session(cli_env, tiny):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastv_edge",
            "chat",
            "-m",
            tiny.llama_path,
            "--mmproj",
            tiny.mmproj_path,
            "-c",
            "4096",
            "-t",
            "1",
            "-n",
            "4000",
            "--strategy",
            "none",
            "--quiet",
            "--temp",
            "0",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
        text=True,
        bufsize=1,
    )
    try:
        proc.stdin.write("Tell me a very long story.\n")
        proc.stdin.flush()
        proc.stdout.read(1)  # the answer has started streaming
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate("/stats\n/quit\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "[interrupted]" in out
    assert "[kept 0/0 image tokens" in out  # /stats still answers: the session survived
