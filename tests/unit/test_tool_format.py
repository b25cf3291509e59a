"""Tools out of the box: the parser a chat template's format needs, and the Hermes tool
templates for ChatML and LLaMA2-Chat templates that render no tools."""

import json

import pytest

from checkpoints.tiny import LLAMA2_CHAT_TEMPLATE, build_tokenizer
from server.tool_format import choose_tool_format

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
LOOP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
]


@pytest.mark.parametrize(
    ("template", "requested", "parser", "own"),
    [
        ("... <tool_call> ... tools ...", None, "hermes", True),
        ("... <|python_tag|> ...", None, "llama3_json", True),
        ("... [TOOL_CALLS] ...", None, "mistral", True),
        ("{% for t in tools %}<fn>{{ t }}{% endfor %}", None, None, True),
        (CHATML, None, "hermes", False),
        (LLAMA2_CHAT_TEMPLATE, None, "hermes", False),
        ("{{ messages }}", None, None, True),
        (CHATML, "pythonic", "pythonic", True),
        (CHATML, "none", None, True),
    ],
)
def test_the_parser_follows_the_templates_format(template, requested, parser, own):
    chosen = choose_tool_format(template, requested)
    assert chosen.parser == parser
    assert (chosen.template is None) == own, chosen.reason


@pytest.mark.parametrize("base", [CHATML, LLAMA2_CHAT_TEMPLATE])
def test_the_tool_templates_render_a_whole_tool_loop(base):
    tokenizer = build_tokenizer(0)
    template = choose_tool_format(base, None).template
    text = tokenizer.apply_chat_template(
        LOOP, tools=TOOLS, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert text.count("Be brief.") == 1
    assert json.dumps(TOOLS[0]) in text  # the tools, as JSON, where the model reads them
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert call in text
    assert "<tool_response>\nSunny\n</tool_response>" in text
    assert text.index("Weather in Paris?") < text.index(call) < text.index("Sunny")
    assert text.rstrip().endswith(("<|im_start|>assistant", "[/INST]"))
