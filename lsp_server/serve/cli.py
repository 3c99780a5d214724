"""``diffgemma-serve``: serve the model over HTTP (OpenAI/vLLM completions, llama.cpp infill)."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from lsp_server import VERSION

API_KEY_ENV = "DIFFGEMMA_API_KEY"
LOG_LEVELS = ("debug", "info", "warning", "error")
EMBEDDED_MODEL = "embedded"  # engine.EMBEDDED_MODEL, without importing torch for --help

logger = logging.getLogger("lsp_server.serve")


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value!r}")
    return int(value)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    from lsp_server.settings import (DTYPE_CHOICES, DTYPE_HELP, ENGINE_MODE_HELP, ENGINE_MODES, NO_COMPILE_HELP,
                                     QUANTIZATION_HELP, QUANTIZATIONS)

    parser = argparse.ArgumentParser(
        prog="diffgemma-serve",
        description="Serve a DiffusionGemma block-diffusion model over HTTP: the OpenAI/vLLM completions API "
                    "(/v1/models, /v1/completions, streaming per committed canvas), /v1/canvas (an SSE stream of "
                    "every denoising step), llama.cpp's /infill (llama.vim, llama.vscode) and /health.",
        epilog=f"The model loads in the background: /health answers 503 with status \"loading\" until it is ready. "
               f"The API key may also come from ${API_KEY_ENV}.",
    )
    parser.add_argument("--version", action="version", version=f"diffgemma-serve {VERSION}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000,
                        help="port to listen on (default 8000; 0 picks a free port, printed at startup)")
    parser.add_argument("--model", default=EMBEDDED_MODEL,
                        help=f"checkpoint directory, or {EMBEDDED_MODEL!r} for the packaged model (default)")
    parser.add_argument("--served-model-name", metavar="NAME",
                        help="the model name in the API (default: 'embedded' for the packaged model, else the "
                             "checkpoint directory's name); requests naming another model get 404")
    parser.add_argument("--api-key", metavar="KEY",
                        help=f"require 'Authorization: Bearer KEY' on /v1/* and /infill (default: ${API_KEY_ENV} "
                             "if set, else no key); /health stays open")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--engine-mode", choices=ENGINE_MODES, default="serving", help=ENGINE_MODE_HELP)
    parser.add_argument("--no-compile", action="store_true", help=NO_COMPILE_HELP)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help=QUANTIZATION_HELP)
    parser.add_argument("--threads", type=_positive,
                        help="the model's intra-op threads (default: every core this process may use but one, "
                             "at least one)")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info",
                        help="server and access log level (default info; logs go to stderr)")
    return parser


def default_model_name(model: str) -> str:
    return EMBEDDED_MODEL if model == EMBEDDED_MODEL else Path(model).expanduser().resolve().name


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before uvicorn starts so the actual port (for --port 0) is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from lsp_server.pipeline import intra_op_threads
    from lsp_server.serve.app import ServeConfig, create_app
    from lsp_server.settings import Settings, apply_changes

    if "://" in args.model:  # the language server's remote models are URLs; this server only serves checkpoints
        parser.error(f"--model must be a checkpoint directory or {EMBEDDED_MODEL!r}, not a URL ({args.model})")
    settings, problems = apply_changes(Settings(), {"model": args.model, "device": args.device, "dtype": args.dtype,
                                                    "engineMode": args.engine_mode, "compile": not args.no_compile,
        "quantization": args.quantization})
    if problems:
        parser.error("; ".join(problems))
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    config = ServeConfig(
        model=settings.model,
        served_model_name=args.served_model_name or default_model_name(settings.model),
        api_key=api_key or None,
        device=settings.device,
        dtype=settings.dtype,
        engine_mode=settings.engine_mode,
        compile=settings.compile,
        quantization=settings.quantization,
        threads=intra_op_threads(args.threads),
    )
    try:
        sock = bind(args.host, args.port)
    except OSError as error:
        parser.exit(1, f"diffgemma-serve: cannot listen on {url(args.host, args.port)}: {error}\n")
    host, port = sock.getsockname()[:2]
    # uvicorn writes its access log to stdout; stdout carries only the "listening on" line, for scripts.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    server = uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=port, log_level=args.log_level,
                                           log_config=log_config, lifespan="on"))
    # The socket listens already: a client that connects now waits in its backlog until uvicorn accepts.
    print(f"diffgemma-serve listening on {url(host, port)}", flush=True)
    logger.info("serving %s as %r on %s (%d threads, %s)", config.model, config.served_model_name, url(host, port),
                config.threads, "API key required" if config.api_key else "no API key")
    server.run(sockets=[sock])
    # Immediately, as the language server does: a compilation still running in the background would otherwise
    # hold the exit until it finishes (engine.serving).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if server.started else 1)


if __name__ == "__main__":
    main()
