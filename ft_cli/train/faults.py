"""Fault injection for crash-safety tests: `FT_FAULT_INJECTION=ACTION@POINT`.

ACTION is sigkill, sigterm or sigusr1 (sent to this process); POINT is `step:N` (after
optimizer step N), `checkpoint:STAGE` (every save) or `checkpoint-N:STAGE` (the save at
step N), with STAGE one of start, weights, saved, manifest, committed, retention (see
checkpoints.py for where each sits). Several specs can be given separated by commas.
Unset, this costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "FT_FAULT_INJECTION"
_ACTIONS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigusr1": signal.SIGUSR1}


def fault_point(*points: str) -> None:
    """Act on the first spec naming one of `points` (several names for the same place)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        action, _, where = item.strip().partition("@")
        if where in points and action in _ACTIONS:
            os.kill(os.getpid(), _ACTIONS[action])
            return


def checkpoint_fault(stage: str, step: int) -> None:
    fault_point(f"checkpoint:{stage}", f"checkpoint-{step}:{stage}")
