"""Property-based fuzzing of the server's own OpenAPI schema with schemathesis, on a budget."""

import contextlib
import json
from dataclasses import dataclass, field

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode


@dataclass
class Outcomes:
    cases: int = 0
    timeouts: int = 0
    server_errors: list[str] = field(default_factory=list)


def server_failure(status: int, text: str) -> str | None:
    """A 5xx answer, or a stream that carried a 5xx error event after its 200."""
    if status >= 500:
        return f"{status} {text}"
    for line in text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            error = json.loads(line[6:]).get("error", {})
            if error.get("type") == "server_error" or "engine" in str(error.get("code")):
                return f"stream error event {line}"
    return None


def fuzz_server(
    base_url: str, headers: dict[str, str], per_operation: int = 15, timeout: float = 5
) -> Outcomes:
    """Valid and invalid requests for every operation; a client timeout counts as no answer.

    Deterministic (derandomized) so that a failure reproduces; generations that outlast
    ``timeout`` are dropped by the client, which the server must survive too.
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    outcomes = Outcomes()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=per_operation,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:
                try:
                    response = case.call(base_url=base_url, headers=headers, timeout=timeout)
                except requests.Timeout:
                    outcomes.timeouts += 1
                    return
                outcomes.cases += 1
                failure = server_failure(response.status_code, response.text)
                if failure:
                    outcomes.server_errors.append(
                        f"{case.method} {case.path} {case.body!r:.300} -> {failure[:300]}"
                    )

            # An operation with no inputs (GET /health) has no invalid variant to generate.
            with contextlib.suppress(Unsatisfiable):
                run()
    return outcomes
