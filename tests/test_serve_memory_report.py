"""``serve`` with a model that can never fit: said at start-up, refused at once, the rest serve."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

import fake_llama_server
from config_builder import entry
from net import free_port, wait_until
from router_proc import RouterProcess


def test_a_model_that_can_never_fit_is_reported_at_start_and_refused(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # never read: memory_gb stands for it
    gguf = str(tmp_path / "m.gguf")
    config = {
        "models": {
            "chat": entry("m-chat", free_port(), model_path=gguf, memory_gb=0.5),
            "huge": entry("m-huge", free_port(), model_path=gguf, memory_gb=40, on_demand=True),
        },
        "router": {"memory_budget_gb": 2},
    }
    bin_dir = fake_llama_server.install(tmp_path / "bin")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLM_SERVER_CACHE": str(tmp_path / "cache"),
    }
    router = RouterProcess(config, tmp_path, command="serve", env=env).start()
    try:
        wait_until(lambda: router.backends()["chat"]["state"] == "ready", 30, "chat ready")
        assert "m-huge): field 'memory_gb': needs memory_gb 40.0 GB, more than the memory " in (
            router.log()
        )
        began = time.monotonic()
        refused = httpx.post(
            f"{router.url}/v1/chat/completions",
            json={"model": "m-huge", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert time.monotonic() - began < 2  # at once: nothing was started or waited for
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "insufficient_memory"
        assert "40.0 GB" in error["message"] and "2.0 GB" in error["message"]
        chat = router.openai().chat.completions.create(
            model="m-chat", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].message.content
        assert router.backends()["huge"]["state"] == "unloaded"
    finally:
        router.stop()
