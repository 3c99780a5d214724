"""diffgemma-serve: the DiffusionGemma engine behind an OpenAI/vLLM-compatible and a llama.cpp-compatible HTTP API.

The app is :func:`lsp_server.serve.app.create_app`; the command line is :mod:`lsp_server.serve.cli`. Nothing is
imported here, so ``diffgemma-serve --help`` answers before torch is loaded.
"""
