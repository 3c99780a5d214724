"""diffgemma-lsp: the language server, tree-sitter context and CLIs."""
