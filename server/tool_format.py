"""Which tool-call format a model gets when the user names none: vLLM's parser that reads it,
and, for a chat template that does not render tools, a template of this package that does.

Agent frameworks send ``tool_choice: "auto"`` by default, so it must work on a plain start. A
template that writes ``<tool_call>`` (Hermes, Qwen) is read by vLLM's ``hermes`` parser, one
that writes ``<|python_tag|>`` (LLaMA 3.x) by ``llama3_json``, Mistral's ``[TOOL_CALLS]`` by
``mistral``. A ChatML or LLaMA2-Chat template without tools (the demo's, LLaMA2-Chat's) gets the
Hermes format through `server/templates/`, applied only to requests that carry tools or a tool
exchange, so every other request renders exactly as the model's own template renders it.
"""

from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
# What a chat template writes -> vLLM's parser of that format.
WRITTEN_FORMATS = (("<tool_call>", "hermes"), ("<|python_tag|>", "llama3_json"))
WRITTEN_FORMATS += (("[TOOL_CALLS]", "mistral"),)
# Chat formats this package has a Hermes tool template for (what the template writes -> file).
TOOL_TEMPLATES = (("<|im_start|>", "chatml_tools.jinja"), ("[INST]", "llama2_tools.jinja"))


@dataclass(frozen=True)
class ToolFormat:
    parser: str | None  # vLLM's tool-call parser for "auto"; None: "auto" is refused
    template: str | None  # the template for requests with tools; None: the model's own
    reason: str  # for the start-up banner


def choose_tool_format(chat_template: str | None, requested: str | None) -> ToolFormat:
    """``requested``: ``--tool-call-parser`` (None: choose; "none": no parser)."""
    if requested == "none":
        return ToolFormat(None, None, "off (--tool-call-parser none)")
    if requested is not None:
        return ToolFormat(requested, None, "as given (--tool-call-parser)")
    text = chat_template or ""
    for marker, parser in WRITTEN_FORMATS:
        if marker in text:
            return ToolFormat(parser, None, f"the chat template writes {marker}")
    if "tools" in text:
        return ToolFormat(
            None,
            None,
            "the chat template renders tools in a format of its own: give --tool-call-parser",
        )
    for marker, name in TOOL_TEMPLATES:
        if marker in text:
            template = (TEMPLATES / name).read_text()
            return ToolFormat("hermes", template, f"the chat template renders no tools: {name}")
    return ToolFormat(
        None, None, "no known chat format: give --tool-call-parser and --chat-template"
    )
