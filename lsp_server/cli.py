"""``diffgemma-lsp``: start the language server (stdio by default, or TCP)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lsp_server import VERSION


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:2087), got {value!r}")
    return host, int(port)


def _version_parser() -> argparse.ArgumentParser:
    """`--version` alone, answered before the model stack (torch, a second or more) is imported."""
    parser = argparse.ArgumentParser(prog="diffgemma-lsp", add_help=False)
    parser.add_argument("--version", action="version", version=f"diffgemma-lsp {VERSION}")
    return parser


def build_parser() -> argparse.ArgumentParser:
    from engine import EMBEDDED_MODEL
    from lsp_server.settings import (DTYPE_CHOICES, DTYPE_HELP, ENGINE_MODE_HELP, ENGINE_MODES, MODEL_HELP,
                                     NO_COMPILE_HELP, QUANTIZATION_HELP, QUANTIZATIONS)

    parser = argparse.ArgumentParser(
        parents=[_version_parser()],
        prog="diffgemma-lsp",
        description="Language server giving inline code completions (LSP 3.18 textDocument/inlineCompletion, "
                    "with a textDocument/completion fallback) from a DiffusionGemma block-diffusion model.",
        epilog="Clients may override these options, and tune everything else, through "
               "initializationOptions or workspace/didChangeConfiguration (see lsp_server/settings.py).",
    )
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    transport.add_argument("--tcp", metavar="HOST:PORT", type=_host_port, help="listen for one client on HOST:PORT")
    parser.add_argument("--model", default=EMBEDDED_MODEL,
                        help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--engine-mode", choices=ENGINE_MODES, default="serving", help=ENGINE_MODE_HELP)
    parser.add_argument("--no-compile", action="store_true", help=NO_COMPILE_HELP)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help=QUANTIZATION_HELP)
    parser.add_argument("--log-file", help="write the server log here (default: stderr; stdout carries LSP)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until the client exits; the process ends here (never returns after serving)."""
    _version_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from lsp_server.server import SERVER
    from lsp_server.settings import apply_changes

    logging.basicConfig(
        filename=args.log_file, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings, problems = apply_changes(SERVER.base_settings, {
        "model": args.model, "device": args.device, "dtype": args.dtype, "engineMode": args.engine_mode,
        "compile": not args.no_compile,
        "quantization": args.quantization})
    if problems:
        parser.error("; ".join(problems))
    SERVER.base_settings = settings
    if args.tcp:
        SERVER.start_tcp(*args.tcp)
    else:
        SERVER.start_io()
    SERVER.exit_process()  # the connection ended without an exit notification


if __name__ == "__main__":
    main()
