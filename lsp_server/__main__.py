"""``python -m lsp_server``: the same as ``diffgemma-lsp``."""

from lsp_server.cli import main

main()
