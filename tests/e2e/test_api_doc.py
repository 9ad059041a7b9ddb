"""docs/api.md is a script: every shell line in it runs here, in order, against a real lab.

The doc walks a new user through the REST API on the demo lab (topologies/demo.yaml): a new VPC
created with no file edit, a VM for it, both sides of a peering, state, effective routes,
``?wait=programmed``, pings, the error format, and deletes. A ```sh block is run line by line by
one bash process (variables carry over), so the doc cannot drift from the code:
- a line must exit 0, unless it starts with ``! `` (then it must fail);
- a line ending in ``# => TEXT`` must print TEXT.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.integration.labkit import ROOT, running

DOC = Path(ROOT) / "docs" / "api.md"
EXPECT = re.compile(r"\s+# => (.*)$")


def doc_lines(text: str) -> list[str]:
    """The shell lines of every ```sh block, with backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S):
        joined = block.replace("\\\n", " ")
        lines += [
            ln for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
        ]
    return lines


def as_checked(n: int, line: str) -> str:
    """One doc line as bash that stops the script, saying which line, when it misbehaves."""
    want = None
    m = EXPECT.search(line)
    if m:
        line, want = line[: m.start()], m.group(1).strip()
    negate = line.startswith("! ")
    cmd = line[2:] if negate else line
    show = shlex.quote(f"line {n}: {line.strip()}")
    if negate:
        return f"if {cmd}; then echo {show}: succeeded but must fail >&2; exit 1; fi"
    if want is None:
        return f"{cmd} || {{ echo {show}: failed >&2; exit 1; }}"
    return (
        f'out=$({cmd}) || {{ echo {show}: failed >&2; exit 1; }}; echo "$out"; '
        f'grep -qF -- {shlex.quote(want)} <<<"$out" || '
        f"{{ echo {show}: output lacks {shlex.quote(want)} >&2; exit 1; }}"
    )


def test_the_doc_parses_into_checked_lines() -> None:
    lines = doc_lines(DOC.read_text(encoding="utf-8"))
    assert any("/v1/placement/" in ln for ln in lines)
    assert any(ln.startswith("! ") for ln in lines)
    assert any(EXPECT.search(ln) for ln in lines)
    assert as_checked(1, "! false").startswith("if false; then")
    script = as_checked(2, "echo ACTIVE   # => ACTIVE")
    assert subprocess.run(["bash", "-c", script], capture_output=True).returncode == 0
    script = as_checked(3, "echo INACTIVE   # => ACTIVE!")
    assert subprocess.run(["bash", "-c", script], capture_output=True).returncode == 1


def test_every_line_of_the_api_doc_runs_against_the_demo_lab() -> None:
    lines = doc_lines(DOC.read_text(encoding="utf-8"))
    script = "\n".join(["set -uo pipefail", *(as_checked(i + 1, ln) for i, ln in enumerate(lines))])
    with running("demo.yaml", os.path.join(ROOT, "topologies")) as lab:
        res = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env={**os.environ, "MESHPEER_LAB": lab.name},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"{res.stderr}\n--- stdout\n{res.stdout[-6000:]}"
