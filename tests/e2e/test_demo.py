"""The peering demo, run exactly as users run it (``scripts/demo`` is this module on a lab).

Every observation of the demo checks itself and prints ``[ok]`` or ``[FAIL]``; the exit code is
0 only if all matched. This test holds the demo to that: exit 0, all five stages shown, no
``[FAIL]``, and the lab gone afterwards even if the demo crashed half-way.
"""

from __future__ import annotations

import os
import subprocess
import sys

from meshpeer.lab.plan import STATE_ROOT
from tests.integration.labkit import ROOT, lab_cli, new_lab_name


def failed_observations(stdout: str) -> list[str]:
    return [line.split("[FAIL]", 1)[1].strip() for line in stdout.splitlines() if "[FAIL]" in line]


def test_demo_runs_green_end_to_end() -> None:
    name = new_lab_name()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "meshpeer.lab.demo", "--lab", name],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        lab_cli(name, "down")
    out = f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
    print(out)
    for n in range(1, 6):
        assert f"[demo {n}]" in res.stdout, f"stage {n} missing\n{out}"
    assert "[ok]" in res.stdout, out
    assert "Traceback" not in res.stdout + res.stderr, out
    assert not os.path.exists(f"{STATE_ROOT}/{name}"), "the demo left its lab's state directory"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left = [line.split()[0] for line in netns.splitlines() if line.startswith(f"{name}-")]
    assert not left, f"namespaces left after the demo: {left}"
    failed = failed_observations(res.stdout)
    assert res.returncode == 0, out
    assert not failed, out
