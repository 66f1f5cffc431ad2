"""`llava-lite serve`: an OpenAI-compatible chat-completions API and a web chat page for one model.

    app = create_app("runs/demo/stage2", Settings(api_key="secret"))   # any ASGI server can run it
    llava-lite serve --model runs/demo/stage2 --port 8000               # or uvicorn via the CLI
"""
from .app import create_app
from .cli import add_parser
from .errors import APIError
from .settings import Settings

__all__ = ["APIError", "Settings", "add_parser", "create_app"]
