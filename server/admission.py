"""Admission control counted in what the engine will run: requests, sequences and tokens.

One 30K-token prompt costs what a thousand short ones do, and one request with many prompts
and a large ``n`` is many engine sequences, so the server bounds all three in flight. A request
is admitted in two steps: before its prompts are tokenized (a request and its sequences), then
once its token count is known (each sequence's prompt plus the output it may generate). Past any
bound it gets 429 with Retry-After at once instead of queueing without end; a request larger
than a bound on its own gets 400, since no retry could ever admit it.
"""

from dataclasses import dataclass

from server.errors import RETRY_AFTER_SECONDS, APIError


@dataclass
class Ticket:
    """A place held by one request until `release` (which may be called more than once)."""

    admission: "Admission"
    sequences: int
    tokens: int = 0
    released: bool = False

    def charge(self, tokens: int) -> None:
        """Add the request's tokens (prompt + output of every sequence); 429 past the bound."""
        admission = self.admission
        if tokens > admission.max_tokens:
            raise APIError(
                400,
                f"this request needs {tokens} tokens (prompts plus max_tokens of every "
                f"sequence) and the server holds at most {admission.max_tokens} at once; "
                "send fewer prompts, a smaller n or max_tokens",
                param="max_tokens",
            )
        if admission.tokens + tokens > admission.max_tokens:
            admission.refuse(
                f"{admission.tokens} tokens are in flight and this request adds {tokens} "
                f"(limit {admission.max_tokens})"
            )
        admission.tokens += tokens
        self.tokens += tokens

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.requests -= 1
            self.admission.sequences -= self.sequences
            self.admission.tokens -= self.tokens


class Admission:
    def __init__(self, max_requests: int, max_sequences: int, max_tokens: int) -> None:
        self.max_requests, self.max_sequences = max_requests, max_sequences
        self.max_tokens = max_tokens
        self.requests = self.sequences = self.tokens = 0

    def admit(self, sequences: int) -> Ticket:
        """Hold a place for one request of ``sequences`` engine sequences; 429 if full."""
        if sequences > self.max_sequences:
            raise APIError(
                400,
                f"this request is {sequences} sequences (n x prompts) and the server runs at "
                f"most {self.max_sequences} at once; send fewer prompts or a smaller n",
                param="n",
            )
        if self.requests >= self.max_requests:
            self.refuse(f"{self.requests} requests are in flight (limit {self.max_requests})")
        if self.sequences + sequences > self.max_sequences:
            self.refuse(
                f"{self.sequences} sequences are in flight and this request adds {sequences} "
                f"(limit {self.max_sequences})"
            )
        self.requests += 1
        self.sequences += sequences
        return Ticket(self, sequences)

    def refuse(self, reason: str) -> None:
        raise APIError(
            429,
            f"server busy: {reason}; retry later",
            code="server_busy",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
