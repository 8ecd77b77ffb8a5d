"""Which backends run: a pure policy over a snapshot (state.py -> policy.py -> decisions.py)."""

from slm_server.scheduler.decisions import (
    Decision,
    Hold,
    Refuse,
    RefuseReason,
    Start,
    Stop,
    StopReason,
    Wait,
)
from slm_server.scheduler.policy import decide
from slm_server.scheduler.state import Demand, Phase, RoleState, Snapshot

__all__ = [
    "Decision",
    "Demand",
    "Hold",
    "Phase",
    "Refuse",
    "RefuseReason",
    "RoleState",
    "Snapshot",
    "Start",
    "Stop",
    "StopReason",
    "Wait",
    "decide",
]
