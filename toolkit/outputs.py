"""Output caps: a cell that prints hundreds of MB must not make a record (or a runner) that big.

Two layers, because either alone falls short:

* in the kernel, ``sys.stdout``/``sys.stderr`` stop forwarding text past the run's limit, so a
  200 MB ``print`` loop never crosses the wire (ipykernel batches 0.2 s of output per message,
  which can be a single message of hundreds of MB);
* in the runner, every output message is charged to the same budget; past it, outputs are dropped
  and a visible marker in the cell says how much was lost. This catches rich displays and text
  written straight to file descriptor 1 by child processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["OutputBudget", "kernel_cap_code", "marker_text"]


def marker_text(limit: int, dropped: int) -> str:
    """Return the marker shown where outputs were cut."""
    return (
        f"\n[nbcron] output truncated: this run passed its {limit / 1048576:.1f} MiB output "
        f"limit (`max_output` in [tool.nbcron]); {dropped:,} characters were dropped here.\n"
    )


_KERNEL_CAP = """
import sys
state = {"limit": %(limit)d, "used": 0, "marked": False}
def cap(stream):
    write = stream.write
    def capped(text):
        n = len(text)
        room = state["limit"] - state["used"]
        if n <= room:
            state["used"] += n
            return write(text)
        if room > 0:
            state["used"] += room
            write(text[:room])
        if not state["marked"]:
            state["marked"] = True
            write(%(marker)r)
        return n
    stream.write = capped
for stream in (sys.stdout, sys.stderr):
    if stream is not None:
        cap(stream)
"""


def kernel_cap_code(limit: int) -> str:
    """Return one line for IPython's ``exec_lines`` that caps stream output in the kernel.

    It runs in a throw-away namespace so the notebook's own namespace stays clean.
    """
    marker = (
        f"\n[nbcron] output truncated: this run passed its {limit / 1048576:.1f} MiB output "
        "limit (`max_output` in [tool.nbcron]); further printed text is dropped.\n"
    )
    code = _KERNEL_CAP % {"limit": limit, "marker": marker}
    return f"exec(compile({code!r}, '<nbcron output cap>', 'exec'), {{}})"


@dataclass
class OutputBudget:
    """The characters of output a run may still store."""

    limit: int
    used: int = 0
    dropped: int = 0

    def size_of(self, content: dict[str, Any]) -> int:
        if "text" in content:
            return len(content["text"])
        data = content.get("data")
        if isinstance(data, dict):
            return sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in data.values())
        return len(json.dumps(content))

    def take(self, size: int) -> int:
        """Charge ``size``; return how much of it fits (0 when the budget is spent)."""
        room = max(self.limit - self.used, 0)
        granted = min(room, size)
        self.used += granted
        self.dropped += size - granted
        return granted
