"""Start a controller like ``python -m meshpeer.manager``, with two benchmark-only knobs.

- ``MESHPEER_BENCH_WSGI_MAX``: eventlet's WSGI server serves at most
  ``eventlet.wsgi.DEFAULT_MAX_SIMULTANEOUS_REQUESTS`` (1024) connections at once, and every
  subscription holds one for good; ``meshpeer/rest/server.py`` does not pass ``max_size``. This
  raises the default before the server starts (0 keeps eventlet's).
- ``MESHPEER_BENCH_PROFILE``: run under cProfile and write the stats there on SIGUSR1.
"""

from __future__ import annotations

import os
import signal
import sys

import meshpeer.manager as manager  # monkey-patches the stdlib for eventlet first

import eventlet.wsgi  # isort: skip


def main() -> int:
    wsgi_max = int(os.environ.get("MESHPEER_BENCH_WSGI_MAX", "0"))
    if wsgi_max > 0:
        eventlet.wsgi.DEFAULT_MAX_SIMULTANEOUS_REQUESTS = wsgi_max
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
