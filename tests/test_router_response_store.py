"""previous_response_id through the real router, with a small response_store_mb.

The backend has no /v1/responses, so the router converts and keeps each conversation;
the openai SDK is the client.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from config_builder import entry
from fake_backend_proc import FakeBackend
from router_proc import RouterProcess

_STORE_MB = 0.01  # about 10 KB: two conversations of 4 KB fit, not three


@pytest.fixture(scope="module")
def oai(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    fake = FakeBackend().start(["--no-responses"])
    config = {
        "models": {"chat": entry("m-chat", fake.port)},
        "router": {"response_store_mb": _STORE_MB},
    }
    router = RouterProcess(config, tmp_path_factory.mktemp("store"))
    try:
        yield router.start().openai()
    finally:
        router.stop()
        fake.stop()


def test_the_oldest_conversations_go_once_their_bytes_are_needed(oai: openai.OpenAI) -> None:
    ids = [oai.responses.create(model="m-chat", input=f"{n} " + "w" * 4000).id for n in range(3)]
    follow_up = oai.responses.create(model="m-chat", input="and?", previous_response_id=ids[2])
    assert follow_up.output_text == "echo: and?"
    with pytest.raises(openai.NotFoundError, match="response_store_mb"):
        oai.responses.create(model="m-chat", input="and?", previous_response_id=ids[0])


def test_a_conversation_larger_than_the_store_is_not_kept(oai: openai.OpenAI) -> None:
    huge = oai.responses.create(model="m-chat", input="w" * 20_000)
    assert huge.output_text.startswith("echo: www")  # answered all the same
    with pytest.raises(openai.NotFoundError, match="unknown or expired"):
        oai.responses.create(model="m-chat", input="and?", previous_response_id=huge.id)
