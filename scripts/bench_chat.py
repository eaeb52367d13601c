"""Time to first token of each turn of a conversation, with the KV cache kept between turns
(lmgen chat) and with the whole conversation prefilled afresh each turn.

    python scripts/bench_chat.py [--model DIR] [--tokens 40]

Six fixed user turns, greedy; after each reply the same conversation is generated again from
scratch (the library's ``generate`` with the messages), and the two replies are checked to be
the same tokens. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmgen  # noqa: E402
from lmgen.engine.batching import generate
from lmgen.engine.conversation import Conversation  # noqa: E402
from lmgen.engine.generation import Finished, GenerationSettings  # noqa: E402
from lmgen.formats.paths import resolve_model  # noqa: E402

TURNS = ["What is the capital of France?", "What is the population of that city?", "Tell me a fact about the sea.",
         "And one about mountains.", "Which of the two do you prefer?", "Thanks. Say goodbye."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or GGUF file (default: lmgen's default model)")
    parser.add_argument("--tokens", type=int, default=40, help="longest reply")
    args = parser.parse_args()
    lm = lmgen.load(resolve_model(args.model))
    settings = GenerationSettings(max_new_tokens=args.tokens)
    conv = Conversation(lm, settings)
    print(f"model {lm.path}, replies of up to {args.tokens} tokens, greedy")
    for i, turn in enumerate(TURNS, 1):
        reply = next(e for e in conv.reply(turn) if isinstance(e, Finished))
        fresh = next(e for e in generate(lm, conv.messages[:-1], settings) if isinstance(e, Finished))
        print(f"turn {i}: prompt {reply.prompt_tokens:4d} tokens, {conv.reused:4d} reused, {conv.prefilled:3d} prefilled; "
              f"time to first token {reply.prefill_seconds * 1e3:6.1f} ms reused, {fresh.prefill_seconds * 1e3:6.1f} ms "
              f"afresh; same reply: {reply.token_ids == fresh.token_ids}")


if __name__ == "__main__":
    main()
