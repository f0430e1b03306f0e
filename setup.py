"""setuptools hook (the metadata is in pyproject.toml): the wheel carries copies of patches/
and CMakeLists.txt in fastv_edge/native_src, so that `python -m fastv_edge.native_build install`
builds the patched llama.cpp from an installed package, with the same cache key as a clone."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithNativeSources(build_py):
    def run(self):
        super().run()
        dest = Path(self.build_lib) / "fastv_edge" / "native_src"
        (dest / "patches").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "CMakeLists.txt", dest / "CMakeLists.txt")
        for patch in sorted((ROOT / "patches").glob("*.patch")):
            shutil.copyfile(patch, dest / "patches" / patch.name)


setup(cmdclass={"build_py": BuildPyWithNativeSources})
