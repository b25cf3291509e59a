"""The http tier: the real app, routes and middleware in this process, over the fake engine."""

import httpx
import pytest

from tests.app_server import app_server
from tests.fake_engine import FakeEngine, Faults
from tests.helpers import ORIGINAL_CONTEXT, SERVED_CONTEXT

KEY = "http-key"


@pytest.fixture(scope="session")
def tokenizer():
    from checkpoints.tiny import build_tokenizer

    return build_tokenizer(0)


def fake_engine(tokenizer, **kwargs) -> FakeEngine:
    return FakeEngine.of(tokenizer, SERVED_CONTEXT, ORIGINAL_CONTEXT, **kwargs)


@pytest.fixture(scope="session")
def app(tokenizer):
    """One app for the tier, with an API key; tests that need other settings start their own."""
    with app_server(fake_engine(tokenizer), api_keys=[KEY], request_timeout=30) as running:
        yield running


@pytest.fixture
def engine(app):
    """The session app's fake engine, its faults reset after each test."""
    yield app.engine
    app.engine.faults = Faults()


@pytest.fixture(scope="session")
def http(app):
    with httpx.Client(
        base_url=app.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as client:
        yield client
