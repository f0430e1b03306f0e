"""Preset files in the Hugging Face cache: `pull` downloads them, load() finds them offline.

huggingface_hub keeps files in its standard cache ($HF_HOME/hub, or cache_dir), so a model
pulled here is shared with every other tool that uses the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError
from .templates import Preset, get_preset


def pull(name: str, *, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> tuple[Path, Path]:
    """Download a preset's model and mmproj files (or reuse them from the cache).

    Args:
        name: preset name (see list_presets()).
        cache_dir: hub cache directory (default: huggingface_hub's).
        progress: show huggingface_hub's progress bars.

    Returns:
        (model path, mmproj path) inside the cache.

    Raises:
        ValueError: unknown preset.
        FastVEdgeError: the download failed (no network, unknown repo or file).
    """
    import huggingface_hub
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    preset = get_preset(name)
    (disable_progress_bars if not progress else enable_progress_bars)()
    paths = []
    for filename in (preset.model_file, preset.mmproj_file):
        try:
            paths.append(Path(huggingface_hub.hf_hub_download(preset.repo, filename, cache_dir=cache_dir)))
        except Exception as e:  # network, auth and missing-file errors all mean "could not pull"
            raise ModelLoadError(
                f"could not download {filename} from {preset.repo} ({type(e).__name__}: {e}); "
                "check the network or download the files yourself and pass -m/--mmproj paths"
            ) from e
    return paths[0], paths[1]


def cached_path(preset: Preset, filename: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached copy of one preset file, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(preset.repo, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def cached_files(
    name: str, mmproj: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> tuple[str, str]:
    """(model, mmproj) paths of a pulled preset; an explicit mmproj path wins.

    Raises:
        ValueError: unknown preset.
        ModelLoadError: the preset has not been pulled.
    """
    preset = get_preset(name)
    model_path = cached_path(preset, preset.model_file, cache_dir)
    mmproj_path = Path(mmproj) if mmproj is not None else cached_path(preset, preset.mmproj_file, cache_dir)
    if model_path is None or mmproj_path is None:
        raise ModelLoadError(f"preset {name!r} is not downloaded; run: fastv-edge pull {name}")
    return str(model_path), str(mmproj_path)
