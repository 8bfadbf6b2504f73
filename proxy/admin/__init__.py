"""The operator surface: the /admin API, the shared operations behind it and the CLI commands."""
