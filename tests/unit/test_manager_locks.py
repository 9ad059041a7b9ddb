"""meshpeer-manager greens the RLocks made before ``eventlet.monkey_patch`` (logging's) by
following the collector's references, not eventlet's walk of every module's objects; a lock
held another way still gets that walk. And the C heap's functions are found without
``ldconfig``."""

from __future__ import annotations

import subprocess
import sys

from meshpeer import heap

# In a fresh interpreter: importing meshpeer.manager monkey-patches the whole process.
PROBE = """
import logging, threading
import meshpeer.manager
import eventlet
assert eventlet.patcher._green_existing_locks is meshpeer.manager.green_existing_locks
for lock in (logging._lock, logging.lastResort.lock):
    assert isinstance(lock, threading._PyRLock), type(lock)
# Two green threads of one OS thread: while one holds logging's lock, the other must not get
# it (a native RLock is reentrant per OS thread, so it would).
held, got = eventlet.event.Event(), []
def holder():
    with logging._lock:
        held.send()
        eventlet.sleep(0.05)
eventlet.spawn(holder)
held.wait()
got.append(logging._lock.acquire(blocking=False))
assert got == [False], got
print("ok")
"""


def test_locks_made_before_monkey_patching_are_green_ones() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


WALK = """
import meshpeer.manager as manager

class Native:  # stands for the RLock type before patching
    def _is_owned(self):
        return False

class Holder:
    def __init__(self, lock):
        self.lock = lock

walked = []
manager._walk_for_locks = walked.append
in_module, in_object = Native(), Native()
module_globals = {"lock": in_module}
holder = Holder(in_object)
manager.green_existing_locks(Native)
import threading
assert walked == [], walked
assert isinstance(module_globals["lock"], threading._PyRLock), module_globals
assert isinstance(holder.lock, threading._PyRLock), vars(holder)
in_list = [Native()]
manager.green_existing_locks(Native)
assert walked == [Native] and type(in_list[0]) is Native, (walked, in_list)
print("ok")
"""


def test_a_lock_held_in_a_dict_or_attribute_is_replaced_else_eventlet_walks() -> None:
    out = subprocess.run(
        [sys.executable, "-c", WALK], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_the_c_heap_functions_are_found_in_the_process() -> None:
    assert heap._libc_function("malloc_trim") is not None
    assert heap._libc_function("no_such_function_in_libc") is None
