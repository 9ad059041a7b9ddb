"""The lab's state file: written before anything is created, so 'down' can always clean up."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from meshpeer.lab.plan import MAX_LAB_INDEX, STATE_ROOT, LabPlan

LOGS_ROOT = "/var/log/meshpeer"


def state_dir(lab: str) -> str:
    return f"{STATE_ROOT}/{lab}"


def logs_dir(lab: str) -> str:
    """Where 'down' keeps the logs of the lab's last run (see teardown.keep_logs)."""
    return f"{LOGS_ROOT}/{lab}"


def state_path(lab: str) -> str:
    return f"{state_dir(lab)}/state.json"


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Whole or not at all: readers never see half a file (also with several writers).
    Owner-only (0600): the lab's state holds its secrets."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError):
        return None


def save(plan: LabPlan, phase: str, extra: dict[str, Any] | None = None) -> None:
    os.makedirs(plan.state_dir, exist_ok=True)
    write_json(state_path(plan.lab), {"phase": phase, "plan": plan.to_json(), **(extra or {})})


def load_raw(lab: str) -> dict[str, Any] | None:
    return read_json(state_path(lab))


def load(lab: str) -> LabPlan | None:
    raw = load_raw(lab)
    return LabPlan.from_json(raw["plan"]) if raw else None


def free_index(lab: str) -> int:
    """Lowest index not held by another lab, so several labs can run side by side."""
    used = set()
    for path in glob.glob(f"{STATE_ROOT}/*/state.json"):
        if path == state_path(lab):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                used.add(int(json.load(f)["plan"]["index"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for i in range(1, MAX_LAB_INDEX + 1):
        if i not in used:
            return i
    raise RuntimeError(f"all {MAX_LAB_INDEX} lab slots are in use")
