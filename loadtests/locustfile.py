"""Long-prompt load from many machines with Locust's own master/worker mode.

The same prompt builder and request shape as ``resonance-loadtest``; time to first token and
time per output token are reported to Locust as their own entries beside the request itself.

    locust -f loadtests/locustfile.py --master --host http://SERVER:8000 --model NAME
    locust -f loadtests/locustfile.py --worker --master-host MASTER   # on every load machine
"""

import itertools
import json
import time

from locust import HttpUser, events, task

from loadtests.client import delta_text, request_body
from loadtests.prompts import PromptBuilder

_indexes = itertools.count()


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--model", required=True, include_in_web_ui=True)
    parser.add_argument("--prompt-tokens", type=int, default=1024, include_in_web_ui=True)
    parser.add_argument("--output-tokens", type=int, default=64, include_in_web_ui=True)
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    parser.add_argument("--api-key", default="", is_secret=True)


class LongPromptUser(HttpUser):
    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.options = options
        if options.api_key:
            self.client.headers["Authorization"] = f"Bearer {options.api_key}"
        self.builder = PromptBuilder(self._count)

    def _count(self, text: str) -> int:
        response = self.client.post(
            "/tokenize", json={"model": self.options.model, "prompt": text}, name="/tokenize"
        )
        response.raise_for_status()
        return int(response.json()["count"])

    def _report(self, name: str, milliseconds: float) -> None:
        self.environment.events.request.fire(
            request_type="METRIC",
            name=name,
            response_time=milliseconds,
            response_length=0,
            exception=None,
            context={},
        )

    @task
    def generate(self) -> None:
        options = self.options
        prompt = self.builder.build(options.prompt_tokens, next(_indexes))
        body = request_body(options.endpoint, options.model, prompt, options.output_tokens)
        path = "/v1/chat/completions" if options.endpoint == "chat" else "/v1/completions"
        start = time.perf_counter()
        first = None
        output_tokens = 0
        with self.client.post(path, json=body, stream=True, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            for raw in response.iter_lines():
                line = raw.decode() if isinstance(raw, bytes) else raw
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    response.failure(str(chunk["error"]))
                    return
                if chunk.get("usage"):
                    output_tokens = chunk["usage"]["completion_tokens"]
                if first is None and chunk.get("choices") and delta_text(chunk):
                    first = time.perf_counter()
            if first is None:
                response.failure("the stream carried no text")
                return
            response.success()
        end = time.perf_counter()
        self._report("time_to_first_token", (first - start) * 1000)
        if output_tokens > 1:
            self._report("time_per_output_token", (end - first) * 1000 / (output_tokens - 1))
