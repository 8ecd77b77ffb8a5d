"""One backend process and the single task that owns its lifecycle.

Only the owner task changes the state. Callers ``await ensure_ready()``
instead of reading the state and acting on it, so there is no window in which
two callers both decide to (re)start the same backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from slm_server.backends.spec import BackendUnsupported, LaunchSpec
from slm_server.config import ModelEntry
from slm_server.exits import describe_exit
from slm_server.supervisor.lines import LineSplitter
from slm_server.supervisor.logs import BackendLog
from slm_server.supervisor.orphans import die_with_parent_hook, guarded_argv, uses_watchdog
from slm_server.supervisor.ports import listener_description, port_in_use
from slm_server.upstream import UpstreamError, UpstreamPool

log = logging.getLogger(__name__)

State = Literal["stopped", "starting", "ready", "failed", "stopping"]

_READY_POLL_S = 0.05
# A small model is up within a second or two, with a request waiting for it: polled more
# often then, its readiness is seen about 20 ms sooner on average.
_READY_POLL_EARLY_S = 0.01
_EARLY_S = 2.0
_EXIT_POLL_S = 0.2  # see BackendProcess._exited
_PROBE_TIMEOUT_S = 1.0
_PROBE_KEEPALIVE_S = 2.0  # polls come every 50 ms while starting; after that, none
_JSON_CONTENT = ((b"content-type", b"application/json"),)
_LOG_SETTLE_S = 0.2
_READ_CHUNK_BYTES = 64 * 1024
_MAX_LOG_LINE_BYTES = 8 * 1024  # longer lines are cut: a log line is for reading
_LOG_FLUSH_S = 2.0  # a dead backend's last lines reach its log file before its exit is told


@dataclass(frozen=True)
class RestartPolicy:
    startup_timeout_s: float = 600.0  # loading a large model from a slow disk takes minutes
    max_start_failures: int = 3  # consecutive failed starts before giving up
    backoff_s: tuple[float, ...] = (0.5, 1)  # before the 2nd and the 3rd start
    # Failed (given up): tried again on the first request after this long. A model server
    # that died for a passing reason (memory, a file being copied) must not stay down.
    retry_failed_after_s: float = 30.0
    stable_after_s: float = 60.0  # up this long: later crashes start the backoff afresh
    stop_grace_s: float = 10.0  # SIGTERM -> SIGKILL
    progress_every_s: float = 15.0  # while loading: a log line this often, so it never looks hung


class ModelDidNotLoad(Exception):
    """The server runs, but its model failed to load."""


class BackendFailed(Exception):
    """The backend could not be started; the message says why."""

    def __init__(self, message: str, retry_in_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s  # when the next request will start it again


class BackendProcess:
    def __init__(
        self,
        role: str,
        entry: ModelEntry,
        launch: Callable[[], LaunchSpec],
        log_file: BackendLog,
        policy: RestartPolicy,
    ) -> None:
        self.role = role
        self.entry = entry
        self.log = log_file
        self._launch = launch
        self._policy = policy
        self.state: State = "stopped"
        self.reason: str | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.generation = 0  # +1 per successful start, so callers can tell a restart
        self.load_s: float | None = None  # the last successful start: spawn to ready
        self.upstream_model: str | None = None  # the `model` the running server accepts
        self.health_path = "/health"  # where the running server says it is up
        # The endpoints the running server answers itself; None: unknown (try, then convert).
        self.native_endpoints: frozenset[str] | None = None
        self._failed_at: float | None = None  # monotonic time it was given up
        self.on_change: Callable[[], None] | None = None  # told of every change of state
        self._changed = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._watched = False  # _proc is the watchdog, and the backend its child
        self._stop_signal = signal.SIGTERM  # what the running server is asked to stop with
        self._pump: asyncio.Task[None] | None = None

    # -- what callers use ------------------------------------------------------

    def start(self) -> None:
        if self._owner is None or self._owner.done():
            self._owner = asyncio.create_task(self._own(), name=f"backend {self.role}")

    def load(self) -> None:
        """Start a stopped or failed backend now (a failed one without its cooldown).

        "starting" is set at once, so that whoever looks next sees the start under way.
        """
        if self._owner is not None and not self._owner.done():
            return
        self._failed_at = None
        self._set("starting", "starting")
        self.start()

    def forget_failure(self) -> None:
        """A failed backend becomes plainly stopped: unloaded by hand, not to be retried."""
        if self.state == "failed":
            self._failed_at = None
            self._set("stopped", "stopped")

    @property
    def retry_at(self) -> float | None:
        """Monotonic time after which a failed backend may be tried again."""
        if self.state != "failed" or self._failed_at is None:
            return None
        return self._failed_at + self._policy.retry_failed_after_s

    async def ensure_ready(self) -> None:
        """Return once the backend serves; BackendFailed if it cannot be started.

        A failed backend is started again by the first call after its cooldown.
        """
        while True:
            if self.state == "ready":
                return
            if self.state == "failed":
                self._retry_failed()
            if self.state in ("failed", "stopped", "stopping"):
                raise BackendFailed(self.reason or f"backend is {self.state}", self._retry_in())
            self._changed.clear()
            await self._changed.wait()

    async def stop(self) -> None:
        self._failed_at = None  # stopped for good: a failed backend is not tried again
        if self._owner is not None and not self._owner.done():
            self._owner.cancel()
            await asyncio.gather(self._owner, return_exceptions=True)
        self._owner = None
        if self.state in ("starting", "stopping"):
            # An owner cancelled before its first step ran no cleanup (a retry set "starting"
            # for it): without this, callers would wait on a start that never comes.
            self._set("stopped", "stopped")

    def _retry_in(self) -> float | None:
        if self.state != "failed" or self._failed_at is None:
            return None
        elapsed = time.monotonic() - self._failed_at
        return max(0.0, self._policy.retry_failed_after_s - elapsed)

    def _retry_failed(self) -> None:
        retry_in = self._retry_in()
        if retry_in is None or retry_in > 0:
            return
        assert self._owner is None or self._owner.done(), "a failed backend has no owner left"
        log.info(
            "%s: trying again %gs after it failed", self.role, self._policy.retry_failed_after_s
        )
        # The owner task has ended with the failure: the new one takes over from here. Set
        # before it runs, so that callers arriving meanwhile wait instead of starting it too.
        self._failed_at = None
        self._set("starting", "starting again after a failure")
        self.start()

    def snapshot(self) -> dict[str, Any]:
        # Stopped is how a backend rests until it is needed: on demand, idle, or evicted.
        state = "unloaded" if self.state == "stopped" else self.state
        report: dict[str, Any] = {"state": state, "pid": self.pid, "restarts": self.restarts}
        if self.reason and self.state not in ("ready", "stopped"):
            report["reason"] = self.reason
        if self.state == "failed":
            report["log_tail"] = self.log.tail(10)
            retry_in = self._retry_in()
            if retry_in is not None:
                report["retry_in_s"] = round(retry_in, 1)
        return report

    # -- the owner -------------------------------------------------------------

    def _set(self, state: State, reason: str | None = None) -> None:
        self.state, self.reason = state, reason
        self._changed.set()
        if self.on_change is not None:
            self.on_change()

    async def _own(self) -> None:
        failures = 0
        gave_up: str | None = None
        try:
            with contextlib.closing(UpstreamPool(keepalive_s=_PROBE_KEEPALIVE_S)) as pool:
                while True:
                    problem = await self._run_once(pool)
                    if problem is None:  # it was up a long time, then exited
                        failures = 0
                        problem = self.reason or "exited"
                    failures += 1
                    if failures >= self._policy.max_start_failures:
                        tail = "\n".join(self.log.tail(10))
                        retry = self._policy.retry_failed_after_s
                        log.error(
                            "%s: giving up: %s (the first request after %gs tries again)\n%s",
                            self.role,
                            problem,
                            retry,
                            tail,
                        )
                        gave_up = problem
                        return
                    delay = self._policy.backoff_s[
                        min(failures - 1, len(self._policy.backoff_s) - 1)
                    ]
                    log.warning("%s: %s; restarting in %gs", self.role, problem, delay)
                    self._set("starting", f"{problem}; restarting")
                    self.restarts += 1
                    await asyncio.sleep(delay)
        finally:
            if gave_up is None:
                self._set("stopping", "stopping")
            await self._terminate()
            await self.log.aclose(_LOG_FLUSH_S)
            # Said last, with nothing awaited after it: whoever hears of it (a load call, the
            # first request after the cooldown) starts a new owner, and ``load`` ignores a
            # start while the old one still runs.
            if gave_up is None:
                self._set("stopped", "stopped")
            else:
                self._failed_at = time.monotonic()
                self._set("failed", gave_up)

    async def _run_once(self, pool: UpstreamPool) -> str | None:
        """Start, wait for ready, serve until exit. None after a long healthy run."""
        self._set("starting", "starting")
        host, port = self.entry.connect_host, self.entry.local_port
        # In a thread: the probe may wait 0.5 s for an unanswering host, and naming the
        # owner scans every process; the loop meanwhile serves other models' requests.
        if await asyncio.to_thread(port_in_use, host, port):
            owner = await asyncio.to_thread(listener_description, port) or "an unknown process"
            return f"port {port} is already in use by {owner}"
        try:
            # In a thread: working out a command line may run the server's --help.
            spec = await asyncio.to_thread(self._launch)
            spawned = time.monotonic()
            proc = await self._spawn(spec)
        except (OSError, ValueError, BackendUnsupported, subprocess.SubprocessError) as exc:
            self.log.note(f"cannot start: {exc}")  # where its user looks for why it is down
            return f"cannot start: {exc}"
        except Exception as exc:
            # A bug in working out the command line: a failed start (retried, reported),
            # never a dead owner that leaves the backend "stopped" with no reason.
            log.exception("%s: cannot start", self.role)
            return f"cannot start: {type(exc).__name__}: {exc}"
        self.upstream_model = spec.upstream_model
        self.health_path = spec.health_path
        self.native_endpoints = spec.native_endpoints or None
        problem = await self._wait_ready(pool, proc, spec)
        if problem is not None:
            await self._terminate()
            return problem
        self.generation += 1
        self.load_s = time.monotonic() - spawned
        self._set("ready")
        log.info("%s: ready (%s on port %d, PID %d)", self.role, self.entry.id, port, proc.pid)
        up_since = time.monotonic()
        code = await self._exited(proc)
        self._proc, self.pid = None, None
        self._end_leftovers(proc)
        await self._drain_output()
        message = self._describe_exit(code, spec)
        log.warning("%s: %s\n%s", self.role, message, "\n".join(self.log.tail(10)))
        self._set("starting", message)
        if time.monotonic() - up_since >= self._policy.stable_after_s:
            return None
        return message

    async def _spawn(self, spec: LaunchSpec) -> asyncio.subprocess.Process:
        self.log.note(f"starting {' '.join(spec.argv)}")
        self._watched = uses_watchdog()
        self._stop_signal = spec.stop_signal
        proc = await asyncio.create_subprocess_exec(
            *guarded_argv(spec.argv, force_watchdog=self._watched, stop_signal=spec.stop_signal),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=spec.environment(os.environ),
            start_new_session=True,  # its own process group, so stop reaches its children
            # Not on a watchdog: the kernel would kill it with the supervisor before it
            # could end the backend, which does not have the hook.
            preexec_fn=None if self._watched else die_with_parent_hook(),
        )
        self._proc, self.pid = proc, proc.pid
        log.info(
            "%s: starting %s for %s (PID %d); its output: %s",
            self.role,
            _program(spec.argv),
            self.entry.id,
            proc.pid,
            self.log.path,
        )
        self._pump = asyncio.create_task(self._pump_output(proc), name=f"log {self.role}")
        return proc

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        """Drain the backend's output, whatever its shape, so it never blocks on a full pipe.

        Read in chunks, not lines: a line longer than the stream's limit (a download bar
        redrawn with carriage returns) would end ``readline`` with an error, and the pump with it.
        """
        assert proc.stdout is not None
        lines = LineSplitter(_MAX_LOG_LINE_BYTES)
        while chunk := await proc.stdout.read(_READ_CHUNK_BYTES):
            for line in lines.feed(chunk):
                self.log.write(line)
        for line in lines.flush():
            self.log.write(line)

    async def _wait_ready(
        self, pool: UpstreamPool, proc: asyncio.subprocess.Process, spec: LaunchSpec
    ) -> str | None:
        """None once the server answers; else why not (exited, or the deadline passed)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout_s = spec.ready_timeout_s or self._policy.startup_timeout_s
        deadline = started + timeout_s
        next_progress = started + self._policy.progress_every_s
        exited = asyncio.ensure_future(self._exited(proc))
        try:
            while True:
                probe = asyncio.ensure_future(self._answers(pool, spec, deadline - loop.time()))
                await asyncio.wait((probe, exited), return_when=asyncio.FIRST_COMPLETED)
                if exited.done():
                    probe.cancel()
                    tail = "; ".join(self.log.tail(5))
                    ended = self._describe_exit(exited.result(), spec)
                    return f"{ended} while starting: {tail}"
                try:
                    if probe.result():
                        return None
                except ModelDidNotLoad as exc:
                    await asyncio.sleep(_LOG_SETTLE_S)  # let its traceback reach the log
                    return f"{exc}: {'; '.join(self.log.tail(5))}"
                now = loop.time()
                if now > deadline:
                    return f"not ready after {timeout_s:g}s"
                if now >= next_progress:
                    next_progress = now + self._policy.progress_every_s
                    self._log_progress(now - started)
                early = now - started < _EARLY_S
                await asyncio.wait(
                    (exited,), timeout=_READY_POLL_EARLY_S if early else _READY_POLL_S
                )
        finally:
            exited.cancel()

    def _describe_exit(self, code: int, spec: LaunchSpec) -> str:
        # The watchdog exits with 128 + N when its backend dies of signal N.
        return describe_exit(code, _program(spec.argv), shell_convention=self._watched)

    def _log_progress(self, elapsed_s: float) -> None:
        last = self.log.last_output()
        said = f"; last output: {last}" if last else " (no output yet)"
        log.info("%s: still loading after %.0fs%s", self.role, elapsed_s, said)

    async def _answers(self, pool: UpstreamPool, spec: LaunchSpec, budget_s: float) -> bool:
        """Health is 200 and, where the spec asks for it, a real request succeeds."""
        host, port = self.entry.connect_host, self.entry.local_port
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                status, _ = await pool.get(host, port, spec.health_path)
        except (UpstreamError, TimeoutError):
            return False
        if status != 200:
            return False
        if spec.ready_request is None:
            return True
        path, body = spec.ready_request
        # A model still loading holds this request; the exit watch above cuts it short.
        # Any other answer means it failed to load (a missing model, no network for a
        # download): the server stays up, so waiting longer would only hang.
        try:
            async with asyncio.timeout(max(budget_s, 1)):
                response = await pool.request(
                    "POST", host, port, path, _JSON_CONTENT, json.dumps(body).encode()
                )
                with contextlib.closing(response):
                    answer = await response.read()
        except TimeoutError:
            return False
        except UpstreamError as exc:
            raise ModelDidNotLoad(f"the model did not load ({exc})") from None
        if response.status == 200:
            return True
        detail = answer.decode(errors="replace")[:300]
        raise ModelDidNotLoad(f"the model did not load ({response.status} {detail})")

    async def _terminate(self) -> None:
        """The stop signal (SIGTERM unless the spec says) to the process group, SIGKILL
        after the grace period."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            if proc is not None:
                self._end_leftovers(proc)
            self.pid = None
            await self._drain_output()
            return
        asked = self._stop_signal
        grace = self._policy.stop_grace_s
        self.log.note(f"stopping it: {asked.name}, SIGKILL after {grace:g}s")
        if self._watched:
            # The watchdog passes the stop signal on to the group; sent to the group as
            # well, the backend would get it twice, which llama-server takes as "exit
            # right now".
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        else:
            _signal_group(proc.pid, asked)
        try:
            await asyncio.wait_for(self._exited(proc), self._policy.stop_grace_s)
        except TimeoutError:
            log.warning("%s: no exit %gs after %s; SIGKILL", self.role, grace, asked.name)
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        self._end_leftovers(proc)
        self.pid = None
        await self._drain_output()

    async def _exited(self, proc: asyncio.subprocess.Process) -> int:
        """``proc.wait()``; under the watchdog, without waiting for the output pipe to close.

        ``wait()`` waits for that too, and a watchdog killed outright leaves its
        backend running with the pipe open: its exit must still be seen, so that
        ``_end_leftovers`` can end the backend.
        """
        if not self._watched:
            return await proc.wait()
        waiting = asyncio.ensure_future(proc.wait())
        try:
            # returncode is set as soon as the process is reaped, open pipe or not.
            while (code := proc.returncode) is None:
                await asyncio.wait((waiting,), timeout=_EXIT_POLL_S)
        finally:
            waiting.cancel()
        return code

    def _end_leftovers(self, proc: asyncio.subprocess.Process) -> None:
        """SIGKILL what is left of an exited watchdog's process group.

        A watchdog exits after its backend, unless it is killed itself (SIGKILL, say,
        by someone who took its PID for the backend's): then the backend, still in
        the group, would run on unguarded and keep the port.
        """
        if self._watched:
            _signal_group(proc.pid, signal.SIGKILL)

    async def _drain_output(self) -> None:
        """Let the last lines reach the log file (a grandchild may hold the pipe: bounded).

        Before the exit is reported: the last words of a backend that died are what its
        user reads the file for.
        """
        if self._pump is not None:
            await asyncio.wait((self._pump,), timeout=1)
            self._pump.cancel()
            self._pump = None
        await self.log.flush(_LOG_FLUSH_S)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pid, sig)


def _program(argv: list[str]) -> str:
    """What a command line runs, in a word: the executable, or what Python runs."""
    program = os.path.basename(argv[0])
    if not program.startswith("python"):
        return program
    args = iter(argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, program)
        if arg == "-c":  # code on the command line: no better name than the interpreter's
            return program
        if arg in ("-X", "-W"):  # options that take a value
            next(args, None)
        elif not arg.startswith("-"):  # the script, after the interpreter's own options
            return os.path.basename(arg)
    return program
