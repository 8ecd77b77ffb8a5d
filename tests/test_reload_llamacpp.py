"""Config reload of a real ``slm-server serve`` running real llama-server processes.

Model ``a`` streams an answer while the config file loses ``b`` and gains ``c``: the
stream ends intact from the same process, ``b``'s process is gone, ``c`` answers. Then a
file with errors changes nothing, and the reload's answer lists the errors.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from gemma_entry import gemma
from net import wait_until
from router_proc import RouterProcess, serving

_TIMEOUT_S = 120
# Thousands of events of a few hundred bytes: more than the socket buffers between the
# backend and a client that does not read hold, and longer to generate than a reload.
_STREAM_TOKENS = 6000
_READ_TOKENS = 200  # read after the reload, then the client leaves


def write(path: Path, models: dict[str, dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump({"models": models}))


def reload(router: RouterProcess) -> httpx.Response:
    return httpx.post(f"{router.url}/admin/reload", timeout=_TIMEOUT_S)


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_reload_leaves_a_streaming_model_alone_and_swaps_the_others(tmp_path: Path) -> None:
    a, b, c = gemma("gemma-a", context_length=8192), gemma("gemma-b"), gemma("gemma-c")
    router = RouterProcess({"models": {"a": a, "b": b}}, tmp_path, command="serve")
    config_path = tmp_path / "models.yaml"
    with serving(router, ready_within_s=_TIMEOUT_S) as router:
        before = router.backends()
        pid_a, pid_b = before["a"]["pid"], before["b"]["pid"]
        client = router.openai()
        stream = client.chat.completions.create(
            model="gemma-a",
            messages=[{"role": "user", "content": "Count from one to one hundred."}],
            max_tokens=_STREAM_TOKENS,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},  # it runs to max_tokens: it cannot end early
            timeout=_TIMEOUT_S,
        )
        pieces: list[str] = []
        first = threading.Event()
        reloaded = threading.Event()

        def read() -> None:
            # After its first piece the client reads no more until the reload has answered:
            # the answer, far longer than the buffers between, stays in flight meanwhile.
            with stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                        first.set()
                        reloaded.wait(_TIMEOUT_S)
                    if len(pieces) >= _READ_TOKENS:
                        return  # enough seen after the reload; the client leaves

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(_TIMEOUT_S), "the stream never began"

        write(config_path, {"a": a, "c": c})
        answer = reload(router)
        assert answer.status_code == 200, answer.text
        assert answer.json()["roles"] == {"a": "unchanged", "c": "added", "b": "removed"}
        assert router.backends()["a"]["in_flight"] == 1  # the stream runs through the reload
        reloaded.set()

        reader.join(_TIMEOUT_S)
        assert not reader.is_alive()
        assert len(pieces) == _READ_TOKENS and "".join(pieces).strip()
        assert router.backends()["a"]["pid"] == pid_a
        assert gone(pid_b)
        assert "b" not in router.backends()

        wait_until(lambda: router.backends()["c"]["state"] == "ready", _TIMEOUT_S, "c ready")
        reply = client.chat.completions.create(
            model="gemma-c",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
            timeout=_TIMEOUT_S,
        )
        assert reply.model == "gemma-c" and reply.choices[0].message.content
        pid_c = router.backends()["c"]["pid"]

        write(config_path, {"a": {**a, "port": "eighty"}, "c": c, "d": {"id": "gemma-d"}})
        refused = reload(router)
        assert refused.status_code == 400
        problems = refused.json()["error"]["problems"]
        assert any("models.a" in line and "port" in line for line in problems), problems
        assert any("models.d" in line for line in problems), problems
        after = router.backends()
        assert set(after) == {"a", "c"}
        assert after["a"]["pid"] == pid_a and after["c"]["pid"] == pid_c
    assert "config not reloaded" not in router.log()  # said in the answer, not as a failure
