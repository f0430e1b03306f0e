"""fastv-edge: FastV visual-token pruning (arXiv 2403.06764) for llama.cpp vision models.

    model = fastv_edge.load("model.gguf", "mmproj.gguf")
    fastv_edge.generate(model, "What is in the image?", ["photo.jpg"], prune=PruneConfig(drop_ratio=0.5))

When libllama cannot be loaded, `import fastv_edge` still succeeds so that
`fastv_edge.native_info()` can say why; the native names then raise PatchMissingError.
"""

from importlib.metadata import PackageNotFoundError, version

from .config import PruneConfig, RuntimeConfig, SamplingConfig
from .errors import ContextOverflowError, FastVEdgeError, ModelLoadError, PatchMissingError, UnsupportedModelError
from .native_build import install_command
from .native_info import native_info

try:
    from .chat import ChatSession
    from .generate import GenerationResponse, generate, stream_generate
    from .handler import FastVChatHandler
    from .model import Model, load
except (ImportError, OSError, RuntimeError) as _error:  # libllama missing or not loadable
    _NATIVE_ERROR = f"{type(_error).__name__}: {_error}"

    def __getattr__(name: str):
        if name in __all__:
            raise PatchMissingError(
                f"fastv_edge.{name} needs llama-cpp-python's native library ({_NATIVE_ERROR}); "
                f"build it: {install_command()}"
            )
        raise AttributeError(f"module 'fastv_edge' has no attribute {name!r}")


try:
    __version__ = version("fastv-edge")
except PackageNotFoundError:  # a source checkout that is not installed
    __version__ = "0+unknown"

__all__ = [
    "load",
    "Model",
    "generate",
    "stream_generate",
    "GenerationResponse",
    "ChatSession",
    "FastVChatHandler",
    "PruneConfig",
    "RuntimeConfig",
    "SamplingConfig",
    "native_info",
    "__version__",
    "FastVEdgeError",
    "ModelLoadError",
    "PatchMissingError",
    "UnsupportedModelError",
    "ContextOverflowError",
]
