"""Text around the model: the tokenizer and its incremental decoder, chat templates (sandboxed),
stop strings, and the check that text from bytes is UTF-8."""
