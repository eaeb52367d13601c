"""Running a model: loading (one pipeline: which model → format → config → tensors → Decoder →
tokenizer), sampling, constraints, the decode loop, continuous batching, conversations with KV
reuse, the records every interface prints, scoring."""
