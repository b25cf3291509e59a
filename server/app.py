"""The FastAPI application: the routers of `server.routes` over one set of shared services."""

from importlib.metadata import version

from fastapi import FastAPI

from server.admission import Admission, export_metrics
from server.engine import Engine
from server.errors import install_error_handlers
from server.execution import Executor
from server.middleware import Gatekeeper, ServerState
from server.prompts import PromptTokenizer
from server.routes import chat, completions, models, probes, tokens
from server.sampling import Limits
from server.services import Services
from server.settings import Settings
from server.tools import parser_class

# Prompts tokenized at once: more would only queue for the same cores.
TOKENIZER_CONCURRENCY = 2


def create_app(engine: Engine, settings: Settings, state: ServerState) -> FastAPI:
    info = engine.info
    max_tokens = settings.max_queued_tokens or 16 * info.max_model_len
    if max_tokens < info.max_model_len:
        raise ValueError(
            f"max_queued_tokens ({max_tokens}) must be at least max_model_len "
            f"({info.max_model_len}), or a longest request could never be admitted"
        )
    admission = Admission(
        settings.max_concurrent_requests, settings.max_concurrent_sequences, max_tokens
    )
    export_metrics(admission)
    template = settings.chat_template.read_text() if settings.chat_template else None
    prompts = PromptTokenizer(
        engine.tokenizer, info.max_model_len, TOKENIZER_CONCURRENCY, template
    )
    limits = Limits(
        max_model_len=info.max_model_len,
        vocab_size=prompts.vocab_size,
        max_n=settings.max_n,
        max_prompts=settings.max_prompts_per_request,
        max_sequences=settings.max_sequences_per_request,
    )
    app = FastAPI(title="resonance-serve", version=version("resonance-serve"))
    app.state.services = Services(
        settings=settings,
        engine=engine,
        state=state,
        prompts=prompts,
        executor=Executor(engine, admission, limits, settings.request_timeout),
        limits=limits,
        tool_parser=parser_class(settings.tool_call_parser),
    )
    for module in (completions, chat, models, tokens, probes):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(
        Gatekeeper,
        state=state,
        counter=engine.metrics.requests,
        max_body_bytes=settings.max_request_body_bytes,
        probes_need_key=settings.api_key_for_probes,
    )
    return app
