"""The FastAPI application: the routers of `server.routes` over one set of shared services.

`build_services` assembles what the routes share around an engine (the real one or the tests'
fake, `server.engine_client`); `create_app` mounts the routes and the middleware over them;
`preload_adapters` is the start-up work that needs the engine (LoRA adapters named by flag).
"""

from importlib.metadata import version

from fastapi import FastAPI
from fastapi.routing import APIRoute

from server.admission import Admission
from server.engine_client import EngineClient
from server.errors import APIError, install_error_handlers
from server.execution import Executor
from server.lora import Adapters
from server.metrics import Metrics
from server.middleware import Gatekeeper, ServerState
from server.prompts import PromptTokenizer
from server.response_store import ResponseStore
from server.routes import (
    chat,
    completions,
    lora,
    messages,
    models,
    openai_responses,
    probes,
    tokens,
)
from server.sampling import Limits
from server.services import Services
from server.settings import Settings
from server.tool_format import choose_tool_format
from server.tools import parser_class

# Prompts tokenized at once: more would only queue for the same cores.
TOKENIZER_CONCURRENCY = 2


def build_services(
    engine: EngineClient,
    settings: Settings,
    state: ServerState,
    metrics: Metrics,
    max_queued_tokens: int,
) -> Services:
    """Everything the routes share, around one started engine."""
    info = engine.info
    metrics.describe_model(info.max_model_len, info.rope)
    metrics.watch_engine(engine.unfinished_requests)
    admission = Admission(
        settings.max_concurrent_requests, settings.max_concurrent_sequences, max_queued_tokens
    )
    metrics.watch_admission(admission)
    template = settings.chat_template.read_text() if settings.chat_template else None
    own_template = template or engine.tokenizer.chat_template
    tool_format = choose_tool_format(
        own_template if isinstance(own_template, str) else None, settings.tool_call_parser
    )
    prompts = PromptTokenizer(
        engine.tokenizer,
        info.max_model_len,
        TOKENIZER_CONCURRENCY,
        template,
        tool_template=tool_format.template,
    )
    limits = Limits(
        max_model_len=info.max_model_len,
        vocab_size=prompts.vocab_size,
        max_n=settings.max_n,
        max_prompts=settings.max_prompts_per_request,
        max_sequences=settings.max_sequences_per_request,
    )
    adapters = Adapters(engine, settings.lora_load_timeout)
    return Services(
        settings=settings,
        engine=engine,
        state=state,
        metrics=metrics,
        prompts=prompts,
        executor=Executor(engine, admission, limits, settings.request_timeout, adapters, metrics),
        limits=limits,
        adapters=adapters,
        tool_parser=parser_class(tool_format.parser),
        tool_format=tool_format,
        response_store=ResponseStore(settings.responses_store_size),
    )


async def preload_adapters(services: Services, modules: dict[str, str]) -> None:
    """The adapters of ``--lora-module``; ValueError (one line) for one that cannot load."""
    for name, path in modules.items():
        try:
            await services.adapters.load(name, path)
        except APIError as error:
            raise ValueError(f"lora_modules: {name}: {error.message}") from None


def create_app(services: Services) -> FastAPI:
    settings = services.settings
    app = FastAPI(title="resonance-serve", version=version("resonance-serve"))
    app.state.services = services
    routers = [completions, chat, openai_responses, messages, models, tokens, probes]
    if settings.allow_runtime_lora:
        routers.append(lora)
    for module in routers:
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(
        Gatekeeper,
        state=services.state,
        counter=services.metrics.requests,
        endpoints=frozenset(r.path for r in app.routes if isinstance(r, APIRoute)),
        max_body_bytes=settings.max_request_body_bytes,
        probes_need_key=settings.api_key_for_probes,
    )
    return app
