"""Prompts to token ids: bounded before, during and after tokenization.

Tokenizing a few megabytes of text takes seconds and much memory, so a text whose length
alone proves that it cannot fit the context is refused without tokenizing it; the rest is
tokenized off the event loop (the Rust tokenizer releases the GIL), a few at a time.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

from server.errors import APIError
from server.vllm_compat import resolve_chat_template_kwargs

# apply_chat_template's arguments that requests set through fields of their own.
TEMPLATE_ARGUMENTS = frozenset(
    {"conversation", "messages", "tools", "add_generation_prompt", "continue_final_message"}
)
# Normalizers (NFC and the like) may merge characters: a tokenizer with one gets this much room.
NORMALIZER_ALLOWANCE = 4


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None = None  # known for text prompts (echo uses it)


def max_chars_per_token(tokenizer: Any) -> int:
    """An upper bound on the characters of text one token stands for.

    A token's vocabulary string is at least as long as the text it encodes (byte-level BPE
    spells each byte as one character; SentencePiece spells the text itself), unless a
    normalizer shortens the text first.
    """
    longest = max(len(token) for token in tokenizer.get_vocab())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizes = backend is None or backend.normalizer is not None
    return longest * (NORMALIZER_ALLOWANCE if normalizes else 1)


def _is_tool_exchange(message: dict[str, Any]) -> bool:
    return message["role"] == "tool" or bool(message.get("tool_calls"))


class PromptTokenizer:
    def __init__(
        self,
        tokenizer: Any,
        max_model_len: int,
        concurrency: int,
        chat_template: str | None = None,
        tool_template: str | None = None,
    ) -> None:
        """``chat_template``: a Jinja template that replaces the checkpoint's own;
        ``tool_template``: the one for conversations with tools, when that one renders none."""
        self.tokenizer, self.max_model_len = tokenizer, max_model_len
        self.chat_template, self.tool_template = chat_template, tool_template
        self.vocab_size = len(tokenizer)
        self.max_chars = max_model_len * max_chars_per_token(tokenizer)
        self._slots = asyncio.Semaphore(concurrency)

    def check_length(self, characters: int, param: str) -> None:
        """Refuse text too long to fit the context in any tokenization, without tokenizing it."""
        if characters > self.max_chars:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"the {param} has {characters} characters, more than any {self.max_model_len} "
                "tokens can hold",
                param=param,
                code="context_length_exceeded",
            )

    async def encode(self, text: str, add_special_tokens: bool = True, param: str = "prompt"):
        self.check_length(len(text), param)
        async with self._slots:
            return await asyncio.to_thread(
                self.tokenizer.encode, text, add_special_tokens=add_special_tokens
            )

    async def text_prompt(self, text: str, add_special_tokens: bool = True) -> Prompt:
        if not text:
            raise APIError(400, "prompt must not be empty", param="prompt")
        return Prompt(await self.encode(text, add_special_tokens), text)

    def token_prompt(self, ids: list[int]) -> Prompt:
        if not ids:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if max(ids) >= self.vocab_size:
            raise APIError(
                400,
                f"token id {max(ids)} is outside the vocabulary (size {self.vocab_size})",
                param="prompt",
            )
        return Prompt(ids)

    async def chat_prompt(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Prompt:
        """The chat template applied off the loop; the template writes the BOS token itself.

        Tools go to the template as transformers passes them; the template decides how (or
        whether) the model sees them.
        """
        self.check_length(sum(len(m["content"]) for m in messages), "messages")
        kwargs = self.template_kwargs(extra)
        template = self.chat_template
        if self.tool_template and (tools or any(_is_tool_exchange(m) for m in messages)):
            template = self.tool_template
        try:
            text = await asyncio.to_thread(
                self.tokenizer.apply_chat_template,
                messages,
                tools=tools,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **kwargs,
            )
        except Exception as error:  # the template's own raise_exception, or a Jinja error
            raise APIError(400, f"messages: {error}", param="messages") from None
        return Prompt(await self.encode(text, add_special_tokens=False, param="messages"), text)

    def template_kwargs(self, extra: dict[str, Any] | None) -> dict[str, Any]:
        """``chat_template_kwargs`` that the template or ``apply_chat_template`` declares, as
        vLLM's server filters them; the rest are dropped (a 400 for ``chat_template`` and
        ``tokenize``, which would change what is rendered into something else)."""
        if not extra:
            return {}
        template = self.chat_template or self.tokenizer.chat_template
        if not isinstance(template, str):
            return {}
        try:
            accepted = resolve_chat_template_kwargs(self.tokenizer, template, extra)
        except ValueError as error:
            param = "chat_template_kwargs"
            raise APIError(400, f"{param}: {error}", param=param) from None
        return {k: v for k, v in accepted.items() if k not in TEMPLATE_ARGUMENTS}

    @staticmethod
    def truncated(prompt: Prompt, keep: int | None) -> Prompt:
        """``truncate_prompt_tokens``: the last ``keep`` tokens (long-context clients send it)."""
        if keep is None or len(prompt.token_ids) <= keep:
            return prompt
        return Prompt(prompt.token_ids[-keep:])

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids)

    async def decode_off_loop(self, token_ids: list[int]) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.tokenizer.decode, token_ids)

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])
