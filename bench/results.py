"""What one benchmark session measured, and the settings it ran with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.cold_start import ColdStart
from bench.metrics_check import MetricsCheck
from bench.replica_kill import KillRun
from bench.replicas import ReplicaRun
from bench.soak import SoakRun
from bench.streams import PlainSample, StreamRun
from bench.uploads import UploadRun
from bench.wrk import WrkRun

DIRECT = "direct"
NGINX = "nginx"
ROUTER = "slm_server"
TARGETS = (DIRECT, NGINX, ROUTER)
# What `--only` can run alone; a run without it runs everything.
PARTS = ("soak", "cold-start", "replicas", "replica-kill", "streams-paced")


@dataclass(frozen=True)
class Settings:
    repeats: int = 3
    duration_s: float = 5.0
    stream_duration_s: float = 3.0
    connections: tuple[int, ...] = (1, 16, 64, 256)
    stream_concurrency: tuple[int, ...] = (1, 16, 64)
    gaps_ms: tuple[float, ...] = (0.0, 5.0)
    chunks: int = 64
    # Paced streams (bench/paced.py): (concurrent streams, gap in ms) per point, and the
    # least each point's clients keep starting streams for (at least 1.5 streams' length).
    paced_points: tuple[tuple[int, float], ...] = (
        (64, 5.0),
        (256, 5.0),
        (256, 20.0),
        (1024, 100.0),
    )
    paced_duration_s: float = 4.0
    sample_duration_s: float = 2.0
    startups: int = 3
    proxy_cpu: int | None = None
    load_cpu: int | None = None
    # The connection count whose runs give "RSS under load".
    rss_connections: int = 256
    # Large uploads sent to the router at once, and the size of each.
    uploads: int = 16
    upload_mb: float = 20.0
    soak_requests: int = 100_000  # 0: no soak run
    soak_connections: int = 64
    soak_deadline_s: float = 900.0  # the soak stops here, finished or not
    cold_starts: int = 5  # cold requests timed through one serve; 0: none
    only: tuple[str, ...] = ()  # parts run alone (of PARTS); empty: everything
    # Fake backends behind one `backend: openai` entry with base_urls.
    replicas: int = 4
    replica_connections: int = 256
    kill_connections: int = 32
    replica_cooldown_s: float = 2.0  # the router's cooldown_s in the replica-kill run

    def runs(self, part: str) -> bool:
        return not self.only or part in self.only


@dataclass
class Results:
    settings: Settings
    environment: dict[str, str] = field(default_factory=dict)
    plain: dict[tuple[str, int], list[WrkRun]] = field(default_factory=dict)
    streams: dict[tuple[str, int, float], list[StreamRun]] = field(default_factory=dict)
    # CPU time of the target (direct: the backend) per request / per chunk, one per run.
    plain_cpu_us: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    stream_cpu_us: dict[tuple[str, int, float], list[float]] = field(default_factory=dict)
    # The paced points, by (target, streams, gap): their runs and the proxy's RSS peaks.
    paced: dict[tuple[str, int, float], list[StreamRun]] = field(default_factory=dict)
    paced_rss_mb: dict[tuple[str, int, float], list[float]] = field(default_factory=dict)
    startup_s: list[float] = field(default_factory=list)
    readiness_lag_s: list[float] = field(default_factory=list)
    cold_starts: list[ColdStart] = field(default_factory=list)
    rss_idle_mb: dict[str, float] = field(default_factory=dict)
    rss_load_mb: dict[str, list[float]] = field(default_factory=dict)  # peak of each run
    rss_after_mb: dict[str, float] = field(default_factory=dict)
    overhead: dict[int, PlainSample] = field(default_factory=dict)  # by concurrency
    uploads: UploadRun | None = None
    metrics: MetricsCheck | None = None
    soak: SoakRun | None = None
    replicas: dict[int, list[ReplicaRun]] = field(default_factory=dict)  # by upstream count
    replica_kills: list[KillRun] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Every raw figure, for comparing sessions later (tuple keys become strings)."""
        return {
            "settings": asdict(self.settings),
            "environment": self.environment,
            "plain": {
                f"{t} c={c}": [asdict(r) for r in runs] for (t, c), runs in self.plain.items()
            },
            "streams": {
                f"{t} c={c} gap={g:g}ms": [
                    {k: v for k, v in asdict(r).items() if not isinstance(v, list)}
                    | {"ttfc_p50_ms": r.ttfc_p50_ms, "stream_p50_ms": r.stream_p50_ms}
                    for r in runs
                ]
                for (t, c, g), runs in self.streams.items()
            },
            "paced": {
                f"{t} c={c} gap={g:g}ms": [
                    {k: v for k, v in asdict(r).items() if not isinstance(v, list)}
                    | {
                        "ttfc_p50_ms": r.ttfc_p50_ms,
                        "stream_p50_ms": r.stream_p50_ms,
                        "cpu_us_per_chunk": r.target_cpu_s / max(r.chunks, 1) * 1e6,
                        "load_busy": r.load_busy,
                        "events_per_read": r.events_per_read,
                    }
                    for r in runs
                ]
                for (t, c, g), runs in self.paced.items()
            },
            "paced_rss_mb": {
                f"{t} c={c} gap={g:g}ms": v for (t, c, g), v in self.paced_rss_mb.items()
            },
            "plain_cpu_us_per_request": {
                f"{t} c={c}": v for (t, c), v in self.plain_cpu_us.items()
            },
            "stream_cpu_us_per_chunk": {
                f"{t} c={c} gap={g:g}ms": v for (t, c, g), v in self.stream_cpu_us.items()
            },
            "startup_s": self.startup_s,
            "readiness_lag_s": self.readiness_lag_s,
            "cold_starts": [asdict(start) for start in self.cold_starts],
            "rss_idle_mb": self.rss_idle_mb,
            "rss_load_mb": self.rss_load_mb,
            "rss_after_mb": self.rss_after_mb,
            "overhead_samples": {
                f"c={c}": {
                    "requests": len(s.latency_ms),
                    "errors": s.errors,
                    "overhead_ms": s.overhead_ms[:2000],
                }
                for c, s in self.overhead.items()
            },
            "uploads": None
            if self.uploads is None
            else {k: v for k, v in asdict(self.uploads).items() if k != "rss_mb"}
            | {"peak_rss_mb": self.uploads.peak_rss_mb},
            "metrics": None if self.metrics is None else asdict(self.metrics),
            "soak": None if self.soak is None else asdict(self.soak),
            "replicas": {
                f"{size} upstreams": [asdict(run) | {"off_even": run.off_even} for run in runs]
                for size, runs in self.replicas.items()
            },
            "replica_kills": [asdict(run) for run in self.replica_kills],
        }
