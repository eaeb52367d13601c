"""The HTTP interface: an OpenAI-compatible server on the same engine as the command line."""
