"""`llava-lite serve`: an OpenAI-compatible chat-completions API and a web chat page for one model.

    app = create_app("runs/demo/stage2", Settings(api_key="secret"))   # any ASGI server can run it
    llava-lite serve --model runs/demo/stage2 --port 8000               # or uvicorn via the CLI

Names are imported on first use, so mounting the CLI (`llava-lite --help`) does not load torch.
"""
from importlib import import_module

_HOMES = {"create_app": ".app", "APIError": ".errors", "Settings": ".settings", "add_parser": ".cli"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name], __name__), name)
