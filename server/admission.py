"""Admission control sized for long prompts: requests and prompt tokens in flight.

One 30K-token prompt costs what a thousand short ones do, so the server bounds both the number
of generation requests it holds and the prompt tokens they carry; past either bound a request
gets 429 with Retry-After at once, instead of queueing without end.
"""

from dataclasses import dataclass

from server.errors import APIError

RETRY_AFTER_SECONDS = 1


@dataclass
class Ticket:
    """A place held by one request until `release` (which may be called more than once)."""

    admission: "Admission"
    prompt_tokens: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.requests -= 1
            self.admission.prompt_tokens -= self.prompt_tokens


class Admission:
    def __init__(self, max_requests: int, max_prompt_tokens: int) -> None:
        self.max_requests, self.max_prompt_tokens = max_requests, max_prompt_tokens
        self.requests = 0
        self.prompt_tokens = 0

    def admit(self, prompt_tokens: int) -> Ticket:
        if self.requests >= self.max_requests:
            self._refuse(f"{self.requests} requests are in flight (limit {self.max_requests})")
        if self.prompt_tokens + prompt_tokens > self.max_prompt_tokens:
            self._refuse(
                f"{self.prompt_tokens} prompt tokens are in flight and this request adds "
                f"{prompt_tokens} (limit {self.max_prompt_tokens})"
            )
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        return Ticket(self, prompt_tokens)

    def _refuse(self, reason: str) -> None:
        raise APIError(
            429,
            f"server busy: {reason}; retry later",
            code="server_busy",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
