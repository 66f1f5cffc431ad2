"""The `serve` command: parse arguments, load the model, run uvicorn."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from llava_lite.constants import MODEL_ARG
from llava_lite.log import logger, setup
from llava_lite.serve.settings import MiB, Settings

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = Settings()
    p.add_argument("--model", required=True, help=MODEL_ARG)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default %(default)s")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: the dtype the model was trained in)")
    p.add_argument("--model-name", default=None, help="id shown by /v1/models (default: the directory's name)")
    p.add_argument("--api-key", default=os.environ.get("LLAVA_LITE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $LLAVA_LITE_API_KEY)")
    p.add_argument("--allow-remote-images", nargs="+", default=[], metavar="HOST",
                   help="hostnames whose http(s) image URLs may be fetched (default: none, data: URLs only)")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / MiB,
                   help="request body limit in MiB (default %(default)s)")
    p.add_argument("--max-image-mb", type=float, default=d.max_image_bytes / MiB,
                   help="one image file limit in MiB (default %(default)s)")
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels,
                   help="width x height limit (default %(default)s)")
    p.add_argument("--max-images", type=int, default=d.max_images, help="images per request (default %(default)s)")
    p.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                   help="max_tokens when a request sets none (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="waiting requests before 503 (default %(default)s)")
    return p


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `serve` on the package CLI; the command runs `args.func(args)`."""
    p = subparsers.add_parser("serve", help="serve a model: OpenAI-compatible API + web chat page",
                              description="Serve a model over an OpenAI-compatible API, with a web chat page at /.")
    configure(p).set_defaults(func=run)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        model_name=args.model_name or Path(args.model).resolve().name,
        api_key=args.api_key or None,
        max_body_bytes=int(args.max_body_mb * MiB),
        max_image_bytes=int(args.max_image_mb * MiB),
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        default_max_tokens=args.default_max_tokens,
        max_queue=args.max_queue,
        allow_remote_images=tuple(h.lower() for h in args.allow_remote_images),
    )


def run(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from llava_lite.serve.app import create_app
    except ModuleNotFoundError as e:
        raise SystemExit(f"error: llava-lite serve needs {e.name}, which is not installed; "
                         "install the serve extra: pip install 'llava-lite[serve]'") from None
    from llava_lite.infer.chat import Assistant
    from llava_lite.model.llava import LlavaLite

    settings = settings_from(args)
    if args.host not in LOOPBACK and settings.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach this port can use the model",
                       args.host)
    from llava_lite.model.llava import default_device

    device = args.device or default_device()
    from llava_lite.interop.sources import model_dir

    model = LlavaLite.from_pretrained(model_dir(args.model), device=device, dtype=args.dtype)
    app = create_app(Assistant(model, device), settings)
    logger.info(f"llava-lite serve: {settings.model_name} at http://{args.host}:{args.port}/ (API: /v1)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    args = configure(argparse.ArgumentParser(prog="llava-lite serve", description=__doc__)).parse_args(argv)
    setup()
    run(args)
