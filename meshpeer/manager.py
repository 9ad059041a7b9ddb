"""meshpeer-manager: a ryu-manager-style launcher for os-ken apps on the eventlet hub.

os-ken 4.x ships no manager command. Stock ryu-manager does not start on Python 3.11
(see docs/decisions.md), so this is the one entry point for controllers and OHCs:

    meshpeer-manager ryu_apps.controller --config-file ctl1.conf [oslo.config flags]
"""

from __future__ import annotations

import gc

if __name__ == "__main__":
    # No cyclic collections while the process imports (~100k objects, none of them garbage):
    # 200 collections, ~30 ms of every start (docs/decisions.md). main() freezes what the
    # imports made and turns the collector back on before the apps start.
    gc.disable()

import logging
import os
import resource
import signal
import socket
import sys
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

# The hub type is read when os_ken.lib.hub is first imported, and eventlet must patch the
# stdlib before anything else opens a socket; native mode in os-ken 4.2.2 silently ends
# an app's event loop when a handler raises.
os.environ.setdefault("OSKEN_HUB_TYPE", "eventlet")
# eventlet's green DNS resolver imports dnspython and, through it, cryptography: 16 MiB of
# every process. Without it libc resolves names, in a worker thread (``resolve_off_hub``).
os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
from meshpeer import heap  # noqa: E402

heap.cap_arenas()  # before eventlet's thread pool starts (meshpeer/heap.py)

import eventlet  # noqa: E402
import eventlet.green.socket  # noqa: E402
import eventlet.green.thread  # noqa: E402
import eventlet.patcher  # noqa: E402
import eventlet.tpool  # noqa: E402

_walk_for_locks = eventlet.patcher._green_existing_locks


def green_existing_locks(rlock_type: type) -> None:
    """What ``eventlet.monkey_patch`` does to the RLocks made before it (logging's): each
    becomes a green one wherever it is held, in a dict or in an object's attributes. Found
    through the collector's references instead of eventlet's walk of every object that every
    module reaches (~30 ms of each process start, docs/decisions.md); a lock held any other
    way (a list, a closure) leaves it to that walk."""
    old = [o for o in gc.get_objects() if isinstance(o, rlock_type)]
    holders: list[list[dict[Any, Any]]] = []
    for lock in old:
        dicts: list[dict[Any, Any]] = []
        for h in gc.get_referrers(lock):
            if h is old or isinstance(h, FrameType):
                continue
            d = h if isinstance(h, dict) else getattr(h, "__dict__", None)
            if not isinstance(d, dict) or not _keys_of(d, lock):
                _walk_for_locks(rlock_type)
                return
            dicts.append(d)
        holders.append(dicts)
    tid = eventlet.green.thread.get_ident()
    for lock, dicts in zip(old, holders, strict=True):
        new = eventlet.patcher._convert_py3_rlock(lock, tid)
        for d in dicts:
            for key in _keys_of(d, lock):
                d[key] = new


def _keys_of(d: dict[Any, Any], value: object) -> list[Any]:
    # not a comprehension in green_existing_locks: a closure cell there would hold the lock
    return [k for k, v in d.items() if v is value]


eventlet.patcher._green_existing_locks = green_existing_locks
eventlet.monkey_patch()


def resolve_off_hub(blocking: Callable[..., Any]) -> Callable[..., Any]:
    """``blocking`` (libc's getaddrinfo) run in eventlet's thread pool: a slow or dead DNS
    server then stalls only the connection that asked, not the hub (OpenFlow echoes,
    heartbeats, the REST API). Addresses resolve at once either way (the lab's URLs are
    addresses)."""

    def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        return eventlet.tpool.execute(blocking, *args, **kwargs)

    return getaddrinfo


if os.environ["EVENTLET_NO_GREENDNS"].lower() in ("yes", "1", "true"):
    # green create_connection looks its getaddrinfo up in eventlet.green.socket
    socket.getaddrinfo = eventlet.green.socket.getaddrinfo = resolve_off_hub(socket.getaddrinfo)

from os_ken import cfg, log  # noqa: E402
from os_ken.base.app_manager import AppManager  # noqa: E402
from os_ken.lib import hub  # noqa: E402

from meshpeer import __version__, options  # noqa: E402

CONF = cfg.CONF
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONF.register_cli_opts(
    [
        cfg.MultiStrOpt("app", positional=True, default=[], help="os-ken app modules to run"),
        cfg.StrOpt("pid-file", default=None, help="write the process id to this file"),
    ]
)
OSLO_TYPES = {str: cfg.StrOpt, int: cfg.IntOpt, float: cfg.FloatOpt, bool: cfg.BoolOpt}
# os-ken's own option groups for apps meshpeer never runs: kept out of --help.
UNUSED_OS_KEN_GROUPS = ("zapi", "bgp-app", "test-switch")


def register_options() -> None:
    """meshpeer's options (meshpeer.options), registered before the command line is parsed so
    that --help lists them and each can also be given there (``--ohc-host hv1``)."""
    for group in UNUSED_OS_KEN_GROUPS:
        # oslo.config has no public way to list a group's options.
        opts = [info["opt"] for info in CONF._groups[group]._opts.values()]
        CONF.unregister_opts(opts, group=group)
    for section in options.SECTIONS:
        CONF.register_cli_opts(
            [
                OSLO_TYPES[o.kind](o.name, default=o.default, secret=o.secret, help=o.help)
                for o in section.options
            ],
            group=section.name,
        )


register_options()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        CONF(
            args=args,
            prog="meshpeer-manager",
            project="meshpeer",
            version=f"meshpeer {__version__}",
        )
    except cfg.ConfigFilesNotFoundError as exc:
        print(f"meshpeer-manager: {exc}", file=sys.stderr)
        return 2
    if CONF.log_file:
        CONF.set_override("use_stderr", False)  # the log file alone: no twin on stderr
    log.init_log()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    # A shard holds one connection per subscription: allow as many files as the hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not CONF.app:
        print("meshpeer-manager: name at least one app module", file=sys.stderr)
        return 2
    if CONF.pid_file:
        with open(CONF.pid_file, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
    manager = AppManager.get_instance()
    manager.load_apps(CONF.app)
    # What the imports made (modules, classes, options) lives as long as the process: out of
    # the collector's sight. The apps' own state (a shard's store) is collected as usual.
    gc.freeze()
    gc.enable()
    services = manager.instantiate_apps(**manager.create_contexts())

    def stop(signum: int, _frame: object) -> None:
        # Leave at once. Nothing blocking may run inside a signal handler under eventlet (a
        # green thread cannot be waited for here), and nothing needs to: committed intent is
        # durable in the store, and OVS keeps the OHC's flows.
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        hub.joinall(services)
    finally:
        manager.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
