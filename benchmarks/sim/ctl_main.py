"""Start a controller like ``python -m meshpeer.manager``, with a benchmark-only knob.

(The connection limits are the shard's ``max_connections`` and ``max_connections_per_client``
options, which ``cluster.py`` writes from ``--wsgi-max``.)

- ``MESHPEER_BENCH_PROFILE``: run under cProfile and write the stats there on SIGUSR1.
"""

from __future__ import annotations

import os
import signal
import sys

import meshpeer.manager as manager  # monkey-patches the stdlib for eventlet first


def main() -> int:
    path = os.environ.get("MESHPEER_BENCH_PROFILE")
    if not path:
        return manager.main(sys.argv[1:])
    import cProfile

    prof = cProfile.Profile()

    def dump(_signum: int, _frame: object) -> None:
        prof.disable()
        prof.dump_stats(path)
        os._exit(0)

    signal.signal(signal.SIGUSR1, dump)
    prof.enable()
    return manager.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
