"""``resonance-serve``: load settings, start the engine, serve HTTP until stopped."""

import asyncio
import logging
import sys

import uvicorn
from pydantic import ValidationError

from server.settings import Settings, load_settings

logger = logging.getLogger("resonance-serve")


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    flag = f"--{field.replace('_', '-')}" if field else "settings"
    value = f" (got {first['input']!r})" if field and "input" in first else ""
    return f"{flag}: {first['msg']}{value}"


def _startup_message(error: Exception) -> str:
    if isinstance(error, ValidationError):  # vLLM's own configuration classes are pydantic
        return error.errors()[0]["msg"].removeprefix("Value error, ")
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _banner(settings: Settings, engine) -> str:
    info = engine.info
    url = f"http://{settings.host}:{settings.port}"
    lines = [
        f"resonance-serve: '{info.name}' on {url}/v1 (max context {info.max_model_len} tokens)",
        f"  rope_parameters: {info.rope}",
    ]
    if settings.is_demo:
        lines += [
            "  This is the built-in DEMO model: tiny, with random weights (its text is noise).",
            "  Serve a real one with: resonance-serve --model meta-llama/Llama-2-7b-chat-hf "
            "--rope-type resonance_yarn --rope-factor 8",
        ]
    return "\n".join(lines)


async def serve(settings: Settings) -> None:
    from server.app import create_app
    from server.engine import Engine

    engine = Engine(settings)
    try:
        app = create_app(engine)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level=settings.log_level
        )
        server = uvicorn.Server(config)
        print(_banner(settings, engine), flush=True)
        await server.serve()
    finally:
        engine.shutdown()


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
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as error:  # a setting the engine refused at start-up
        sys.exit(f"resonance-serve: error: {_startup_message(error)}")


if __name__ == "__main__":
    main()
