"""Tool calls and thinking on tiny models whose chat templates write each family's syntax (Hermes
as Qwen2.5/Qwen3/SmolLM3, Llama 3's JSON, Phi-4-mini's, Mistral's, and a thinking template in the
DeepSeek-R1 manner), all served by one real ``lmgen serve``: every call the model makes parses
and validates, the template renders the calls and their results back, and reasoning stays out
of ``content`` unless ``chat_template_kwargs`` turns thinking off."""

import json
import shutil

import jsonschema
import pytest
from conftest import save_tiny
from test_serve import Served
from test_serve_agents import WEATHER, reassembled

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]

CALLS = ("{%- for c in m.tool_calls %}{{ OPEN }}{{ {'name': c.function.name, ARGS: c.function.arguments} | tojson }}"
         "{{ CLOSE }}{%- endfor %}")
TEMPLATES = {  # each family's shape, written for these tests: tools shown, calls and results rendered
    "hermes": ("{%- if tools %}<|im_start|>system\n<tools>{{ tools | tojson }}</tools><|im_end|>\n{%- endif %}"
               "{%- for m in messages %}{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}"
               "\n</tool_response><|im_end|>\n{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
               "{%- if m.tool_calls %}" + CALLS.replace("OPEN }}", "'<tool_call>\\n' }}").replace(
                   "CLOSE }}", "'\\n</tool_call>' }}").replace("ARGS", "'arguments'") +
               "{%- endif %}<|im_end|>\n{%- endif %}{%- endfor %}"
               "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"),
    "llama3": ("<|begin_of_text|>{%- for m in messages %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else "
               "m.role }}<|end_header_id|>\n\n{%- if loop.last and tools %}{{ tools | tojson }}{%- endif %}"
               "{{ m.content }}{%- if m.tool_calls %}" + CALLS.replace("{{ OPEN }}", "").replace(
                   "{{ CLOSE }}", "").replace("ARGS", "'parameters'") +
               "{%- endif %}<|eot_id|>{%- endfor %}"
               "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"),
    "phi4": ("{%- for m in messages %}<|{{ m.role }}|>{%- if m.role == 'system' and tools %}<|tool|>"
             "{{ tools | tojson }}<|/tool|>{%- endif %}{{ m.content }}{%- if m.tool_calls %}<|tool_call|>"
             "{{ m.tool_calls | map(attribute='function') | list | tojson }}<|/tool_call|>{%- endif %}<|end|>"
             "{%- endfor %}{%- if add_generation_prompt %}<|assistant|>{%- endif %}"),
    "mistral": ("{%- for m in messages %}{%- if m.role == 'user' %}[INST]{{ m.content }}[/INST]{%- elif m.tool_calls %}"
                "[TOOL_CALLS]{{ m.tool_calls | map(attribute='function') | list | tojson }}</s>"
                "{%- elif m.role == 'tool' %}[TOOL_RESULTS]{{ m.content }}[/TOOL_RESULTS]{%- else %}{{ m.content }}"
                "{%- endif %}{%- endfor %}{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]"
                "{%- endif %}"),
    "thinking": ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
                 "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- if enable_thinking is defined and "
                 "not enable_thinking %}<think>\n\n</think>\n\n{%- else %}<think>\n{%- endif %}{%- endif %}"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    paths = []
    for name, template in TEMPLATES.items():
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        save_tiny("qwen2" if name in ("hermes", "thinking") else "llama", path, max_position_embeddings=4096)
        (path / "chat_template.jinja").write_text(template)
        paths.append(path)
    args = [arg for path in paths for arg in ("--model", str(path))]
    served = Served(*args, "--max-batch", "4")
    names = [m.id for m in served.client().models.list().data]
    yield served, dict(zip(TEMPLATES, names))
    served.stop()
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("family", ["hermes", "llama3", "phi4", "mistral"])
def test_each_familys_calls_parse_validate_and_come_back_through_its_template(served, family):
    server, names = served
    ask = dict(model=names[family], tools=TOOLS, temperature=0.8, seed=3, max_tokens=400)
    for seed in range(3):
        reply = server.client().chat.completions.create(messages=QUESTION, tool_choice="required",
                                                        **{**ask, "seed": seed})
        choice = reply.choices[0]
        if choice.finish_reason == "tool_calls":
            break
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER)
    result = {"role": "tool", "tool_call_id": call.id, "content": "Sunny-" * 5}
    final = server.client().chat.completions.create(
        messages=QUESTION + [choice.message.model_dump(exclude_none=True), result], tool_choice="none",
        **{**ask, "max_tokens": 4})
    added = final.usage.prompt_tokens - reply.usage.prompt_tokens  # bytes: the call and the result, rendered
    assert added >= len(json.dumps(arguments)) + len(result["content"])
    assert not final.choices[0].message.tool_calls


def test_a_thinking_models_reasoning_stays_out_of_content(served):
    server, names = served
    ask = dict(model=names["thinking"], messages=QUESTION, temperature=0, max_tokens=12)
    reply = server.client().chat.completions.create(**ask).choices[0].message
    assert reply.reasoning_content and not reply.content  # the template opened <think>; it never closed
    streamed = reassembled(server.client().chat.completions.create(**ask, stream=True))
    assert (streamed["reasoning"], streamed["content"]) == (reply.reasoning_content, "")
    plain = server.client().chat.completions.create(**ask, extra_body={
        "chat_template_kwargs": {"enable_thinking": False}}).choices[0].message
    assert plain.content and getattr(plain, "reasoning_content", None) is None


def test_a_thinking_template_still_calls_under_required(served):
    """Thinking closed by the template (enable_thinking false): the grammar still lets the model
    open a thinking block, and whatever it does, it ends in a call that validates."""
    server, names = served
    finishes = []
    for seed in range(6):
        reply = server.client().chat.completions.create(
            model=names["thinking"], messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=0.8,
            seed=seed, max_tokens=300, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        choice = reply.choices[0]
        finishes.append(choice.finish_reason)
        for call in choice.message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        if choice.finish_reason == "tool_calls":
            assert choice.message.tool_calls and not (choice.message.content or "").strip()
    assert "tool_calls" in finishes, finishes


@pytest.mark.parametrize("family", ["hermes", "llama3", "phi4", "mistral"])
def test_each_familys_round_trip_through_the_anthropic_client_and_the_responses_api(served, family):
    import anthropic

    server, names = served
    model = names[family]
    messages = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0).messages
    tools = [{"name": "get_weather", "input_schema": WEATHER}]
    ask = dict(model=model, max_tokens=400, tools=tools, messages=[{"role": "user", "content": "Weather in Paris?"}])
    reply = messages.create(tool_choice={"type": "tool", "name": "get_weather"}, extra_body={"temperature": 0}, **ask)
    [use] = [b for b in reply.content if b.type == "tool_use"]
    jsonschema.validate(use.input, WEATHER)
    turns = ask["messages"] + [{"role": "assistant", "content": reply.content},
                               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                             "content": "Sunny"}]}]
    final = messages.create(**{**ask, "messages": turns, "max_tokens": 4}, tool_choice={"type": "none"})
    assert final.content and final.content[0].type == "text"

    responses = server.client().responses
    first = responses.create(model=model, input="Weather in Paris?", max_output_tokens=400, temperature=0,
                             tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER}],
                             tool_choice="required")
    [call] = [item for item in first.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    again = responses.create(model=model, max_output_tokens=4, tool_choice="none",
                             tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER}],
                             input=[{"role": "user", "content": "Weather in Paris?"},
                                    {"type": "function_call", "call_id": call.call_id, "name": call.name,
                                     "arguments": call.arguments},
                                    {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    assert again.status in ("completed", "incomplete") and again.usage.input_tokens > first.usage.input_tokens


@pytest.mark.parametrize("family", ["hermes", "llama3", "phi4", "mistral"])
def test_each_familys_agents_sdk_and_langchain_round_trips(served, family):
    import agents
    import openai
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    from typing import Annotated

    from pydantic import Field

    server, names = served
    asked = []

    def get_weather(city: Annotated[str, Field(max_length=30)]) -> str:  # (a random model's string must end)
        """The weather in a city."""
        asked.append(city)
        return f"Sunny in {city}"

    agents.set_tracing_disabled(True)
    model = agents.OpenAIResponsesModel(model=names[family], openai_client=openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0))
    agent = agents.Agent(name="weather", tools=[agents.function_tool(get_weather)], model=model,
                         tool_use_behavior="stop_on_first_tool",
                         model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=400))
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=2)
    assert len(asked) == 1 and result.final_output == f"Sunny in {asked[0]}"

    chat = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model=names[family], temperature=0,
                      max_tokens=400, max_retries=0)
    # (a tool as OpenAI's dict: a function's schema allows any extra key, which a random model adds forever)
    ai = chat.bind_tools(TOOLS, tool_choice="required").invoke([HumanMessage("What is the weather in Paris?")])
    [call] = ai.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER)
