"""One module per CLI command (cli.py parses the flags and calls them)."""
