"""``python -m lsp_server.serve``: the same as ``diffgemma-serve``."""

from lsp_server.serve.cli import main

main()
