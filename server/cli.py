"""``resonance-serve``: load settings, start the engine, serve HTTP until stopped."""

import asyncio
import gc
import logging
import signal
import socket
import sys
import time

import uvicorn
from pydantic import ValidationError

from server.memory import IdleTrim
from server.settings import Settings, load_settings

logger = logging.getLogger("resonance-serve")
SHUTDOWN_GRACE_SECONDS = 5


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    flag = f"--{field.replace('_', '-')}" if field else "settings"
    value = f" (got {first['input']!r})" if field and "input" in first else ""
    return f"{flag}: {first['msg']}{value}"


def _startup_message(error: Exception) -> str:
    if isinstance(error, ValidationError):  # vLLM's own configuration classes are pydantic
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in first["loc"])
        return f"{field}: {message}" if field else message
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


_gc_started = 0.0


def _log_slow_collections(phase: str, info: dict) -> None:
    """A garbage collection holds the event loop: say so when one takes long."""
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    elif (seconds := time.perf_counter() - _gc_started) > 0.1:
        logger.warning(
            "garbage collection (generation %d) held the server for %.2f s",
            info["generation"],
            seconds,
        )


def _banner(settings: Settings, engine, plan, tool_format) -> str:
    """Which model, from where, and the context it was trained on and is served at."""
    from server.plan import THREADS_BIND

    info = engine.info
    url = f"http://{settings.host}:{settings.port}"
    lines = [
        f"resonance-serve: '{info.name}' on {url}/v1",
        f"  model: {info.origin}",
        f"  context: trained {info.trained_context} tokens, served {info.max_model_len} tokens",
        f"  rope_parameters: {info.rope}",
        f"  rope policy: {info.rope_policy.name} ({info.rope_policy.reason})",
    ]
    if plan.kv_sequences is not None:
        lines.append(
            f"  KV cache: {plan.kv_cache_gib} GiB, {plan.kv_sequences:.1f} sequences of "
            f"{info.max_model_len} tokens"
        )
    if plan.lora_modules:
        lines.append(f"  LoRA adapters: {', '.join(plan.lora_modules)}")
    parser = tool_format.parser or "none"
    lines.append(f"  tool calls: parser {parser} for tool_choice 'auto' ({tool_format.reason})")
    if THREADS_BIND in plan.environment:
        lines.append(
            f"  engine threads: {THREADS_BIND}={plan.environment[THREADS_BIND]} (one core list "
            "per rank; set the variable yourself to choose)"
        )
    if settings.nnodes > 1:
        lines.append(f"  node 0 of {settings.nnodes}: the other nodes run engine workers")
    if settings.is_demo:
        lines.append(
            "  (the demo; serve another model with --model DIR|HF_ID|FILE.gguf "
            "--rope-type resonance_yarn --rope-factor N)"
        )
    return "\n".join(lines)


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM draining in-flight requests first and a watch on the engine.

    On SIGTERM or SIGINT (Ctrl-C) new requests get 503 (and /health fails) while those in
    flight finish, up to ``drain_timeout`` seconds, whatever their clients do; then the server
    exits 0. A second SIGTERM or SIGINT stops at once (exit 0 too). The engine processes
    ignore both signals meanwhile (`rope_plugins.engine_signals`). If the engine dies, the
    server exits 1 so that an orchestrator restarts it.
    """

    def __init__(self, config: uvicorn.Config, state, engine, drain_timeout: float) -> None:
        super().__init__(config)
        self.state, self.engine, self.drain_timeout = state, engine, drain_timeout
        self.drain_started: float | None = None
        self.exit_code = 0
        self.idle_trim = IdleTrim()

    def handle_exit(self, sig: int, frame) -> None:
        if sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        name = signal.Signals(sig).name
        if self.drain_started is None:
            logger.info("%s: draining %d requests", name, self.state.active_requests)
            self.state.draining = True
            self.drain_started = time.monotonic()
            return
        # (Not uvicorn's handler: it would raise the signal again at exit, ending with 143.)
        logger.info("%s again: stopping now, %d requests cut off", name, self.state.active_requests)
        self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            elapsed = time.monotonic() - self.drain_started
            if self.state.active_requests == 0:
                logger.info("drained; exiting")
                self.should_exit = True
            elif elapsed > self.drain_timeout:
                logger.warning(
                    "drain timeout (%g s): exiting with %d requests cut off",
                    self.drain_timeout,
                    self.state.active_requests,
                )
                self.should_exit = self.force_exit = True  # no wait for their connections
        if not self.engine.alive and not self.should_exit:
            logger.error("the engine died; exiting so that the server is restarted")
            self.exit_code = 1
            self.should_exit = True
        self.engine.stalled_seconds()  # keeps the engine's progress clock current while idle
        self.idle_trim.tick(self.state.active_requests)
        return await super().on_tick(counter)


def bound_socket(host: str, port: int) -> socket.socket:
    """The HTTP port, bound with vLLM's own helper before the engine starts (as vLLM's server
    does): a port in use is refused at once, not after the engine's start, and the ports the
    engine asks the kernel for can never be this one."""
    from server.vllm_compat import create_server_socket

    try:
        return create_server_socket((host, port), reuse_port=False)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None


async def serve(settings: Settings) -> int:
    from server.app import build_services, create_app, preload_adapters
    from server.connections import guarded_protocol
    from server.engine import Engine
    from server.metrics import Metrics
    from server.middleware import ServerState, key_digest
    from server.plan import make_plan

    state = ServerState(api_keys=[key_digest(key) for key in settings.accepted_api_keys()])
    plan = make_plan(settings)  # every check that needs no engine, before it starts
    with bound_socket(settings.host, settings.port) as listener:
        metrics = Metrics(plan.info.max_model_len)
        engine = Engine(
            plan,
            metrics,
            settings.structured_output_timeout,
            eager_constraints=settings.constraint_compiler == "eager",
        )
        try:
            services = build_services(engine, settings, state, metrics, plan.max_queued_tokens)
            await preload_adapters(services, plan.lora_modules)
            app = create_app(services)
            protocol = guarded_protocol(
                settings.header_timeout, settings.body_timeout, settings.max_connections
            )
            config = uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                http=protocol,
                # After the drain (or the engine's death), connections still open get this long.
                timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            )
            server = DrainingServer(config, state, engine, settings.drain_timeout)
            # Millions of objects of the loaded libraries would make every full garbage
            # collection stall the event loop for a second or more: exempt them from it.
            gc.collect()
            gc.freeze()
            gc.callbacks.append(_log_slow_collections)
            print(_banner(settings, engine, plan, services.tool_format), flush=True)
            await server.serve(sockets=[listener])
            return server.exit_code
        finally:
            engine.shutdown()


def run_worker_node(settings: Settings) -> int:
    """A node of rank > 0 of a multi-node engine: vLLM's headless workers for this node's
    ranks, planned from the same settings as node 0 (so the same RoPE), no HTTP."""
    from server.engine import run_headless_workers
    from server.plan import make_plan

    plan = make_plan(settings)
    print(
        f"resonance-serve: node {settings.node_rank} of {settings.nnodes}, engine workers for "
        f"'{plan.info.name}' (rope_parameters: {plan.info.rope}); node 0 at "
        f"{settings.master_addr} serves HTTP",
        flush=True,
    )
    run_headless_workers(plan)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
    except ValidationError as error:
        sys.exit(f"resonance-serve: error: {_one_line(error)}")
    except ValueError as error:
        sys.exit(f"resonance-serve: error: {error}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if settings.node_rank > 0:
            sys.exit(run_worker_node(settings))
        sys.exit(asyncio.run(serve(settings)))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as error:  # a setting the engine refused at start-up
        sys.exit(f"resonance-serve: error: {_startup_message(error)}")
    except RuntimeError as error:  # the engine's process failed; it logged why above
        sys.exit(f"resonance-serve: error: {_startup_message(error)}")


if __name__ == "__main__":
    main()
