"""`replicas: 2` of a real llama-server through `slm-server serve`, with the official
`openai` SDK: both servers answer, and one killed mid-run costs no request."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from gemma_entry import gemma
from net import free_port_run, wait_until
from router_proc import RouterProcess

MODEL = "gemma-twin"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    entry = gemma(MODEL, port=free_port_run(2), replicas=2, max_concurrency=2, cooldown_s=1)
    config = {"models": {"twin": entry}}
    process = RouterProcess(config, tmp_path_factory.mktemp("twin"), command="serve").start()
    try:
        process.wait_backends_ready(120)
        yield process
    finally:
        process.stop()


def ask(client: openai.OpenAI, text: str) -> tuple[str, str]:
    """One short completion: the upstream that answered, and the answer's text."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=4
    )
    answer = raw.parse()
    return raw.headers["x-slm-upstream"], answer.choices[0].message.content or ""


def test_both_replicas_answer_and_the_model_is_listed_once(router: RouterProcess) -> None:
    client = router.openai()
    listed = [model for model in client.models.list().data if model.id == MODEL]
    assert len(listed) == 1
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: ask(client, f"Count to {i}."), range(8)))
    assert Counter(upstream for upstream, _ in answers).keys() == {"twin/0", "twin/1"}
    assert all(text for _, text in answers)


def test_a_killed_replica_costs_no_request_and_comes_back(router: RouterProcess) -> None:
    client = router.openai()
    victim = router.backends()["twin@1"]["pid"]
    os.kill(victim, signal.SIGKILL)
    # Requests go on: the dead one is refused before any answer, and the other takes them.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda i: ask(client, f"Say {i}."), range(6)))
    assert all(text for _, text in answers)

    def back() -> bool:
        now = router.backends()["twin@1"]
        return bool(now["state"] == "ready" and now["pid"] != victim)

    wait_until(back, 120, "the killed replica restarted")
    assert router.backends()["twin@1"]["restarts"] == 1
    # Back in rotation (after its cooldown, if the refusals took it out): it answers again.
    wait_until(lambda: ask(client, "Hi.")[0] == "twin/1", 30, "the restarted replica answering")
