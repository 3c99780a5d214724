from lsp_server.bench.cli import main

raise SystemExit(main())
