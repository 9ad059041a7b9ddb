"""What each process loads: the OHC does not import the controller package (issue 11: the shard
directory is shared, in ``meshpeer.directory``), nor the REST layer's web framework."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import meshpeer.manager
import ohc.app
loaded = sorted(m for m in sys.modules if m.startswith(("meshpeer.controller", "webob")))
print(" ".join(loaded))
"""


def test_the_ohc_loads_no_controller_module_and_no_webob() -> None:
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "", out.stdout
