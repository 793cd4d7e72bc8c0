"""One notebook execution through papermill's engine pieces, made honest and safe.

papermill's ``NotebookExecutionManager`` and ``PapermillNotebookClient`` do the cell loop; this
module adds what they lack: a whole-run deadline that kills the kernel and everything it started,
an interrupt for the runner's own SIGTERM/SIGINT, output caps, secret scrubbing on every save, and
atomic saves with a banner cell on top while running and after any failure.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NotebookExecutionManager

from toolkit.kernels import TOKEN_VARIABLE, ProcessTree, make_kernel_manager
from toolkit.outputs import OutputBudget, kernel_cap_code, marker_text
from toolkit.scrub import Scrubber

__all__ = ["Execution", "Outcome"]

log = logging.getLogger("nbcron")
# nbclient's own log lines ("Kernel died while waiting...") repeat what the record says better.
_client_log = logging.getLogger("nbcron.nbclient")
_client_log.setLevel(logging.CRITICAL)

# How often the watchdog looks at the deadline, the kernel's children and the heartbeat.
_TICK = 0.25
_ERROR_CLIP = 64 * 1024


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [nbcron: {len(text) - limit:,} more characters cut]"


@dataclass
class Outcome:
    """What happened, before it becomes a record: status plus error fields."""

    status: str
    error: dict[str, Any] | None = None
    exception: BaseException | None = None
    cells_started: bool = False


@dataclass(eq=False)
class Execution:
    """Runs ``nb`` once; ``interrupt()`` may be called from a signal handler or another thread."""

    nb: Any
    run_id: str
    runtime: Path
    kernel_name: str
    env: dict[str, str]
    cwd: Path
    scrubber: Scrubber
    max_output: int
    write: Callable[[Any, int | None], None]
    timeout: float | None = None
    start_timeout: float = 60.0
    autosave_every: float = 5.0
    heartbeat: Callable[[], None] | None = None
    heartbeat_every: float = 30.0
    # Start the kernel now but run the first cell only at this instant (pre-started runs).
    not_before: datetime | None = None
    on_start: Callable[[], None] | None = None
    stop_reason: str | None = None
    stop_detail: str = ""
    current_cell: int | None = None
    tree: ProcessTree = field(init=False)
    budget: OutputBudget = field(init=False)

    def __post_init__(self) -> None:
        self.tree = ProcessTree(self.env[TOKEN_VARIABLE])
        self.budget = OutputBudget(limit=self.max_output)
        self._km: Any = None
        self._markers: dict[int, tuple[Any, int]] = {}
        self._done = threading.Event()

    # -- control -----------------------------------------------------------------------------
    def interrupt(self, reason: str = "interrupted", detail: str = "") -> None:
        """Stop the run now: remember why, then kill the kernel and all it started."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_detail = detail
        self._attach()
        self.tree.kill()

    def wait_for_start(self) -> None:
        """Hold the first cell until ``not_before`` (or a stop), then report the real start."""
        if self.not_before is not None:
            while self.stop_reason is None:
                remaining = (self.not_before - datetime.now(timezone.utc)).total_seconds()
                if remaining <= 0:
                    break
                self._done.wait(min(remaining, 0.05))
        if self.on_start is not None and self.stop_reason is None:
            self.on_start()

    def _attach(self) -> None:
        if self.tree.root is None and self._km is not None:
            pid = getattr(getattr(self._km, "provisioner", None), "pid", None)
            if pid:
                self.tree.attach(pid)

    def _watch(self, started: float) -> None:
        deadline = started + self.timeout if self.timeout else None
        next_beat = started + self.heartbeat_every
        while not self._done.wait(_TICK):
            self._attach()
            self.tree.snapshot()
            now = time.monotonic()
            if deadline is not None and now >= deadline and self.stop_reason is None:
                self.interrupt("timed_out")
            if self.stop_reason is not None and self.tree.root is not None:
                # Kill again: a kernel that was still starting when we were asked to stop.
                self.tree.kill()
            if self.heartbeat is not None and now >= next_beat:
                next_beat = now + self.heartbeat_every
                try:
                    self.heartbeat()
                except Exception:  # a lost heartbeat must not stop the run
                    log.warning("could not write the heartbeat of %s", self.run_id, exc_info=True)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Execute the notebook; return the outcome (never raises for notebook problems)."""
        started = time.monotonic()
        self._km = make_kernel_manager(self.kernel_name, self.runtime)
        manager = _Keeper(self)
        watchdog = threading.Thread(target=self._watch, args=(started,), daemon=True)
        watchdog.start()
        exception: BaseException | None = None
        try:
            manager.notebook_start()
            if self.stop_reason is None:
                client = _Client(
                    manager,
                    self,
                    km=self._km,
                    kernel_name=self.kernel_name,
                    startup_timeout=self.start_timeout,
                    timeout=None,
                    log=_client_log,
                    extra_arguments=[
                        # The kernel stops a little short so its own marker fits the budget.
                        "--IPKernelApp.exec_lines="
                        + kernel_cap_code(max(self.max_output - 4096, 0))
                    ],
                )
                client.execute(env=self.env, cwd=str(self.cwd))
        except Exception as exc:
            exception = exc
        finally:
            self._done.set()
            watchdog.join()
            # Whatever happened, nothing the kernel started outlives the run.
            self._attach()
            self.tree.kill()
            manager.finish()
        return self._outcome(exception)

    def _outcome(self, exception: BaseException | None) -> Outcome:
        cell = self._shown_cell(self.current_cell)
        started = self.current_cell is not None
        if self.stop_reason == "timed_out":
            return Outcome(
                "timed_out",
                {
                    "ename": "TimeoutError",
                    "evalue": f"the run passed its timeout of {self.timeout:g}s "
                    "(schedule key `timeout`)",
                    "cell": cell,
                },
                exception,
                started,
            )
        if self.stop_reason == "interrupted":
            return Outcome(
                "interrupted",
                {
                    "ename": "Interrupted",
                    "evalue": self.stop_detail or "the runner was stopped",
                    "cell": cell,
                },
                exception,
                started,
            )
        if exception is not None:
            name = type(exception).__name__
            text = self.scrubber.text(
                str(exception).strip().splitlines()[0] if str(exception).strip() else ""
            )
            if name == "DeadKernelError":
                text = "the kernel died (killed, out of memory, or crashed in native code)"
            return Outcome(
                "failed", {"ename": name, "evalue": text, "cell": cell}, exception, started
            )
        for index, nb_cell in enumerate(self.nb.cells):
            for output in nb_cell.get("outputs", []):
                if output.get("output_type") != "error":
                    continue
                ename, evalue = output.get("ename", ""), output.get("evalue", "")
                if ename == "SystemExit" and evalue in ("", "0", "None"):
                    return Outcome("succeeded", None, None, started)
                return Outcome(
                    "failed",
                    {
                        "ename": ename,
                        "evalue": self.scrubber.text(evalue),
                        "cell": self._shown_cell(index),
                    },
                    None,
                    started,
                )
        return Outcome("succeeded", None, None, started)

    @staticmethod
    def _shown_cell(index: int | None) -> int | None:
        # Index in the saved notebook, where a banner cell sits on top of every non-success.
        return None if index is None else index + 1

    # -- outputs -----------------------------------------------------------------------------
    def charge(self, msg: dict[str, Any]) -> tuple[bool, int]:
        """Charge an output message to the budget; return (keep it?, characters dropped)."""
        content = msg.get("content", {})
        if msg.get("msg_type") == "error":
            # Tracebacks are what people read first: always kept, but not without bound.
            content["evalue"] = _clip(str(content.get("evalue", "")), _ERROR_CLIP)
            content["traceback"] = [
                _clip(str(line), _ERROR_CLIP) for line in content.get("traceback", [])[:200]
            ]
            return True, 0
        size = self.budget.size_of(content)
        granted = self.budget.take(size)
        if granted == size:
            return True, 0
        if msg.get("msg_type") == "stream" and granted > 0:
            content["text"] = content["text"][:granted]
            return True, size - granted
        return False, size - granted

    def mark_truncated(self, outs: list[Any], dropped_here: int) -> None:
        """Put (or move) the truncation marker at the end of ``outs`` and add to its count."""
        # Stream outputs may not carry metadata (nbformat), so the marker is known by identity.
        found = self._markers.get(id(outs))
        if found is None or all(o is not found[0] for o in outs):
            from nbformat.v4 import new_output

            found = (new_output("stream", name="stderr", text=""), 0)
        else:
            outs.remove(found[0])  # keep the marker last, after whatever was kept
        marker, dropped = found[0], found[1] + dropped_here
        outs.append(marker)
        self._markers[id(outs)] = (marker, dropped)
        marker["text"] = marker_text(self.max_output, dropped)

    def is_marker(self, output: Any) -> bool:
        return any(output is marker for marker, _ in self._markers.values())


class _Keeper(NotebookExecutionManager):  # type: ignore[misc]
    """papermill's execution manager, saving through the run's atomic, scrubbing writer."""

    def __init__(self, execution: Execution) -> None:
        super().__init__(
            execution.nb,
            output_path=None,
            progress_bar=False,
            autosave_cell_every=execution.autosave_every,
        )
        self.execution = execution

    def save(self, **kwargs: Any) -> None:
        if kwargs.get("nb") is not None:
            self.nb = kwargs["nb"]
        self.execution.write(self.nb, self.execution.current_cell)
        self.last_save_time = self.now()

    def cell_start(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
        self.execution.current_cell = cell_index
        super().cell_start(cell, cell_index, **kwargs)

    def finish(self) -> None:
        # papermill's notebook_complete, without its final save: the runner writes the record.
        self.end_time = self.now()
        self.nb.metadata.papermill["end_time"] = self.end_time.isoformat()
        if self.start_time is not None:
            self.nb.metadata.papermill["duration"] = (
                self.end_time - self.start_time
            ).total_seconds()


class _Client(PapermillNotebookClient):  # type: ignore[misc]
    """papermill's client, plus the kernel's pid for the watchdog and output caps."""

    def __init__(self, nb_man: _Keeper, execution: Execution, **kwargs: Any) -> None:
        super().__init__(nb_man, **kwargs)
        self.execution = execution

    def papermill_execute_cells(self) -> None:
        self.execution._attach()
        self.execution.wait_for_start()
        if self.execution.stop_reason is not None:
            self.execution.tree.kill()
            return
        super().papermill_execute_cells()

    def output(
        self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> Any:
        if self.output_hook_stack[msg["parent_header"].get("msg_id")]:
            return super().output(outs, msg, display_id, cell_index)
        keep, dropped = self.execution.charge(msg)
        if not keep:
            self.execution.mark_truncated(outs, dropped)
            return None
        out = self._append(outs, msg, display_id, cell_index)
        if dropped:
            self.execution.mark_truncated(outs, dropped)
        return out

    def _append(
        self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> Any:
        if (
            msg["msg_type"] == "stream"
            and not display_id
            and not self.clear_before_next_output
            and outs
            and outs[-1].get("output_type") == "stream"
            and outs[-1].get("name") == msg["content"].get("name")
            and not self.execution.is_marker(outs[-1])
        ):
            # One growing stream output instead of thousands; also keeps a secret that was
            # flushed in two pieces whole, so scrubbing finds it.
            outs[-1]["text"] += msg["content"]["text"]
            return outs[-1]
        return super().output(outs, msg, display_id, cell_index)


def notebook_json(nb: Any) -> str:
    """Return the notebook as .ipynb JSON (no deep copy: strings are stored unsplit)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
