"""lmgen.engine.conversation: turns rendered with the chat template, the KV cache reused between them."""

import shutil

import pytest

import lmgen
from lmgen.engine.batching import generate
from lmgen.engine.conversation import Conversation
from lmgen.engine.generation import Finished, GenerationSettings
from lmgen.errors import InputError
from lmgen.model.decoder import Decoder

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def finished(events) -> Finished:
    return next(e for e in events if isinstance(e, Finished))


@pytest.fixture(scope="module")
def fp32(smollm2_dir):
    return lmgen.load(smollm2_dir)  # the default model's fp32 expansion


def test_reusing_the_cache_gives_what_prefilling_everything_gives(fp32, monkeypatch):
    """Greedy, fp32: each reply is the one a fresh generation from the whole conversation gives;
    and each turn prefills only the tokens after what the cache holds."""
    prefills = []
    forward = Decoder.forward

    def counting(self, tokens, start_pos=0, cache=None, last_only=False):
        if tokens.shape[1] > 1 or start_pos == 0 or cache is None:
            prefills.append((start_pos, tokens.shape[1]))
        return forward(self, tokens, start_pos, cache, last_only)

    settings = GenerationSettings(max_new_tokens=20)
    conv = Conversation(fp32, settings, system="You are brief.")
    turns = ["What is the capital of France?", "What is the population of that city?", "And of Berlin?"]
    prompt_lengths = []
    for turn in turns:
        monkeypatch.setattr(Decoder, "forward", counting)
        prefills.clear()
        reply = finished(conv.reply(turn))
        monkeypatch.setattr(Decoder, "forward", forward)
        assert prefills == [(conv.reused, conv.prefilled)]  # one prefill, of the new tokens only
        history = conv.messages[:-1]  # the conversation this reply answered
        assert reply.token_ids == finished(generate(fp32, history, settings)).token_ids
        prompt_lengths.append(reply.prompt_tokens)
    assert conv.reused >= prompt_lengths[1]  # the last turn found the whole previous prompt in the cache
    assert conv.prefilled < prompt_lengths[2] - prompt_lengths[1] + 25  # the new message and a reply's worth


@pytest.fixture
def templated(tiny_dir, tmp_path):
    root = tmp_path / "chat"
    shutil.copytree(tiny_dir, root)
    (root / "chat_template.jinja").write_text(TEMPLATE)
    return lmgen.load(root)


def test_a_long_conversation_drops_its_oldest_exchanges_not_the_system_message(templated):
    """The tiny model's context is 128 tokens (one per byte here): a few turns outgrow it."""
    conv = Conversation(templated, GenerationSettings(max_new_tokens=8), system="sys")
    for i in range(12):
        finished(conv.reply(f"turn {i} " + "x" * 20))
    assert conv.messages[0] == {"role": "system", "content": "sys"}
    users = [m["content"] for m in conv.messages if m["role"] == "user"]
    assert users[-1].startswith("turn 11") and not any(u.startswith("turn 0 ") for u in users)
    last_prompt = templated.encode_prompt(templated.chat_template.render(conv.messages[:-1]))
    assert len(last_prompt) + 8 <= 128 and conv.dropped > 0  # the last turn had room for its reply


def test_a_message_too_long_for_the_context_is_refused_and_forgotten(templated):
    conv = Conversation(templated, GenerationSettings(max_new_tokens=8))
    with pytest.raises(InputError, match="context window"):
        finished(conv.reply("y" * 500))
    assert conv.messages == []


def test_commands_undo_reset_system_save_load(templated, tmp_path):
    conv = Conversation(templated, GenerationSettings(max_new_tokens=4), system="be kind")
    finished(conv.reply("one"))
    finished(conv.reply("two"))
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.undo() and [m["content"] for m in conv.messages if m["role"] == "user"] == ["one"]
    conv.save(tmp_path / "c.json")
    conv.reset()
    assert conv.messages == [{"role": "system", "content": "be kind"}]
    assert not conv.undo()
    conv.load(tmp_path / "c.json")
    assert [m["content"] for m in conv.messages if m["role"] == "user"] == ["one"]
    conv.set_system("be terse")
    assert conv.messages[0]["content"] == "be terse" and len(conv.messages) == 3
    (tmp_path / "bad.json").write_text('[{"role": "user"}]')
    with pytest.raises(InputError, match="bad.json"):
        conv.load(tmp_path / "bad.json")


def test_a_reply_cut_short_stays_marked_and_the_cache_stays_consistent(templated):
    settings = GenerationSettings(max_new_tokens=30)
    conv = Conversation(templated, settings)
    events = conv.reply("hello")
    next(e for e in events if not isinstance(e, Finished))
    events.close()  # what Ctrl-C does
    assert conv.messages[-1]["cut"] is True
    reply = finished(conv.reply("again"))
    assert reply.token_ids == finished(generate(templated, conv.messages[:-1], settings)).token_ids


def test_a_model_without_a_chat_template_is_refused(tiny_dir):
    with pytest.raises(InputError, match="lmgen generate"):
        Conversation(lmgen.load(tiny_dir))

