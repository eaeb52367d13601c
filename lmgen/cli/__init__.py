"""The command line: ``main`` dispatches to one module per command, which parse options, call
the engine and render its records (text, JSON, progress on stderr)."""
