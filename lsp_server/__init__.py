"""diffgemma-lsp: the language server, tree-sitter context and CLIs."""

from importlib import metadata

try:
    VERSION = metadata.version("diffgemma-lsp")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"
