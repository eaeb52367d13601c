"""The API agents speak, driven by the clients agents use, against a real ``lmgen serve``: the
``openai`` SDK (chat completions with tools, and the Responses API), the ``anthropic`` SDK
(Messages), a LangChain agent (langchain-openai) and an OpenAI Agents SDK agent, each through a
tool round trip to a final answer. Streams reassemble to the whole reply, tool-call replies are
the same alone and among 16 streams, and a thinking model's reasoning never reaches ``content``."""

import json
import threading

import anthropic
import jsonschema
import openai
import pytest
from test_serve import MODEL, Served

KEY = "agent-key"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}}]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = dict(temperature=0, max_tokens=60)


@pytest.fixture(scope="module")
def server():
    served = Served("--max-batch", "16", "--api-key", KEY)
    yield served
    served.stop()


def client(server) -> openai.OpenAI:
    return server.client(KEY)


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def reassembled(stream) -> dict:
    """A chat completions stream's deltas put back together: content, reasoning, calls, finish."""
    out = {"content": "", "reasoning": "", "calls": {}, "finish": None}
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            out["content"] += delta.content or ""
            out["reasoning"] += getattr(delta, "reasoning_content", None) or ""
            for call in delta.tool_calls or []:
                entry = out["calls"].setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            out["finish"] = choice.finish_reason or out["finish"]
    out["calls"] = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(out["calls"].items())]
    return out


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_tool_round_trip_with_the_openai_client(server, choice):
    reply = client(server).chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=choice,
                                                   **GREEDY)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    [(name, arguments)] = calls_of(message)
    assert name == "get_weather"
    jsonschema.validate(arguments, WEATHER)
    result = {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "Sunny, 21 degrees"}
    final = client(server).chat.completions.create(
        model=MODEL, messages=QUESTION + [message.model_dump(exclude_none=True), result], tools=TOOLS,
        tool_choice="none", **GREEDY)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


@pytest.mark.parametrize("choice", ["required", "auto", "none"])
def test_a_stream_reassembles_to_the_whole_reply(server, choice):
    whole = client(server).chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=choice,
                                                   **GREEDY).choices[0]
    streamed = reassembled(client(server).chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=choice, stream=True, **GREEDY))
    assert streamed["calls"] == calls_of(whole.message)
    assert streamed["content"] == (whole.message.content or "")
    assert streamed["finish"] == whole.finish_reason


def test_tool_call_replies_are_the_same_alone_and_among_sixteen_streams(server):
    cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Bern"]
    questions = [[{"role": "user", "content": f"What is the weather in {cities[i % 8]}? ({i})"}] for i in range(16)]
    choices = ["required" if i % 2 else "auto" for i in range(16)]
    alone = [client(server).chat.completions.create(model=MODEL, messages=q, tools=TOOLS, tool_choice=c, **GREEDY)
             .choices[0] for q, c in zip(questions, choices)]
    together, errors = [None] * 16, []

    def stream(i: int) -> None:
        try:
            together[i] = reassembled(client(server).chat.completions.create(
                model=MODEL, messages=questions[i], tools=TOOLS, tool_choice=choices[i], stream=True, **GREEDY))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for one, many in zip(alone, together):
        assert (many["calls"], many["content"], many["finish"]) == \
            (calls_of(one.message), one.message.content or "", one.finish_reason)
    assert any(many["calls"] for many in together)


def test_the_responses_api_round_trip_and_stream(server):
    tools = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
              "parameters": WEATHER}]
    api = client(server).responses
    first = api.create(model=MODEL, input="What is the weather in Paris?", tools=tools, tool_choice="required",
                       max_output_tokens=60, temperature=0)
    [call] = [item for item in first.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert first.status == "completed"
    history = [{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}]
    final = api.create(model=MODEL, input=history, tools=tools, tool_choice="none", max_output_tokens=30,
                       temperature=0, instructions="Answer briefly.")
    assert final.output_text and not [i for i in final.output if i.type == "function_call"]
    with api.stream(model=MODEL, input=history, tools=tools, tool_choice="none", max_output_tokens=30,
                    temperature=0, instructions="Answer briefly.") as events:
        kinds = [event.type for event in events]
        streamed = events.get_final_response()
    assert streamed.output_text == final.output_text
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] in ("response.completed",
                                                                                        "response.incomplete")


def test_the_anthropic_client_round_trip_stream_and_key(server):
    messages = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0).messages
    tools = [{"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER}]
    ask = dict(model=MODEL, max_tokens=60, tools=tools, messages=[{"role": "user", "content": "Weather in Paris?"}],
               extra_body={"temperature": 0})
    reply = messages.create(tool_choice={"type": "any"}, **ask)
    [use] = [block for block in reply.content if block.type == "tool_use"]
    assert reply.stop_reason == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER)
    with messages.stream(tool_choice={"type": "any"}, **ask) as events:
        streamed = events.get_final_message()
    assert [(b.type, getattr(b, "input", None)) for b in streamed.content] == \
        [(b.type, getattr(b, "input", None)) for b in reply.content]
    turns = ask["messages"] + [{"role": "assistant", "content": reply.content},
                               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                             "content": "Sunny"}]}]
    final = messages.create(**{**ask, "messages": turns, "max_tokens": 30}, tool_choice={"type": "none"},
                            system="Answer briefly.", stop_sequences=["\n\n"])
    assert final.stop_reason in ("end_turn", "max_tokens") and final.content[0].type == "text"
    stopped = messages.create(**{**ask, "max_tokens": 40}, tool_choice={"type": "none"}, stop_sequences=[" ", "\n"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence in (" ", "\n")
    assert not any(s in stopped.content[0].text for s in (" ", "\n"))
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(**ask)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        messages.create(**{**ask, "max_tokens": 0})


def test_a_langchain_agent_runs_its_loop_to_the_final_answer(server):
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    asked = []

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"Sunny in {city}"

    @wrap_model_call
    def first_turn_calls(request, handler):  # a 135M model would rather talk than call: the first turn must
        called = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if called else "required"))

    model = ChatOpenAI(base_url=server.url + "/v1", api_key=KEY, model=MODEL, temperature=0, max_tokens=60,
                       max_retries=0)
    agent = create_agent(model, tools=[get_weather], middleware=[first_turn_calls])
    state = agent.invoke({"messages": [("user", "What is the weather in Paris?")]}, {"recursion_limit": 8})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"] and len(asked) == 1
    assert state["messages"][-1].content and not state["messages"][-1].tool_calls


def test_an_openai_agents_sdk_agent_calls_its_tool_over_the_responses_api(server):
    import agents

    agents.set_tracing_disabled(True)
    asked = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"Sunny in {city}"

    model = agents.OpenAIResponsesModel(model=MODEL, openai_client=openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key=KEY, max_retries=0))
    agent = agents.Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather], model=model,
                         model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=60))
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert len(asked) >= 1 and isinstance(result.final_output, str)
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"


def test_responses_text_format_and_what_it_refuses(server):
    api = client(server).responses
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"], "additionalProperties": False}
    reply = api.create(model=MODEL, input="The capital of France, as JSON.", max_output_tokens=40, temperature=0,
                       text={"format": {"type": "json_schema", "name": "answer", "schema": schema}})
    jsonschema.validate(json.loads(reply.output_text), schema)
    for fields, param in [({"previous_response_id": "resp_1"}, "previous_response_id"),
                          ({"input": [{"type": "image"}]}, "input"), ({"input": []}, "input"),
                          ({"tools": [{"type": "web_search"}]}, "tools"), ({"tool_choice": "required"}, "tool_choice")]:
        with pytest.raises(openai.BadRequestError) as raised:
            api.create(**{"model": MODEL, "input": "hi", **fields})
        assert raised.value.body["param"] == param
    short = api.create(model=MODEL, input="Tell me a long story.", max_output_tokens=3, temperature=0)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"
