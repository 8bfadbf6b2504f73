"""`python -m proxy`: the CLI."""

from proxy.cli import main

raise SystemExit(main())
