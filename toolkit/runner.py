"""The runner: run one schedule's notebook now and leave an honest, secret-free record.

The runner, not papermill, decides a run's status:

==============  ==========================================================================
succeeded       every cell ran, or a cell called ``sys.exit(0)`` to say "nothing to do"
partial         succeeded, but the notebook said it stopped early on purpose
failed          a cell raised (ename, evalue, cell), or the kernel died (``DeadKernelError``)
timed_out       the whole run passed the schedule's ``timeout``; kernel and children killed
interrupted     the runner itself was told to stop (SIGTERM/SIGINT) or died
==============  ==========================================================================

Every non-success leaves the saved notebook with a banner cell on top saying what happened.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import secrets as _random
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from toolkit.context import ENV, Trigger
from toolkit.errors import ConfigError, ParameterError
from toolkit.execution import Execution, Outcome, notebook_json
from toolkit.kernels import TOKEN_VARIABLE, private_runtime_dir, remove_runtime_dir
from toolkit.records import (
    RunIndex,
    RunRecord,
    atomic_write_text,
    host_name,
    iso,
    now_utc,
    record_path,
    runner_identity,
    versions,
)
from toolkit.schedules import Schedule, check_parameters, resolve_secrets
from toolkit.scrub import Scrubber
from toolkit.settings import Settings

__all__ = [
    "install_signal_handlers",
    "interrupt_all",
    "make_run_id",
    "publish_run",
    "run_schedule",
]

log = logging.getLogger("nbcron")

_active: set[Execution] = set()
_active_lock = threading.Lock()
# Set by a stop request; a run that has not reached its kernel yet sees it and stops too.
_stop_requested: str | None = None
BANNER_TAG = "nbcron-banner"
# How often a running run writes its heartbeat (and its record) to the index. A scheduler takes
# over a run on another machine whose heartbeat is older than its lease (scheduler.LEASE), so
# this must stay well below it.
HEARTBEAT_EVERY = 10.0
LEASE_LOST = (
    "another scheduler took this run over (its heartbeat was older than the lease) and marked it "
    "interrupted; stopped here so that only the run started in its place goes on"
)
# With ``runs_url``, a running record is published at its first save, then at most this often.
PUBLISH_EVERY = 30.0


def make_run_id(
    schedule: str,
    trigger: Trigger,
    scheduled_for: datetime | None,
    attempt: int = 1,
    now: datetime | None = None,
) -> str:
    """Return the run id: deterministic for scheduled runs and their retries, unique otherwise."""
    if trigger in ("schedule", "catchup", "retry") and scheduled_for is not None:
        stamp = scheduled_for.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"{schedule}/{stamp}" if attempt <= 1 else f"{schedule}/{stamp}-a{attempt}"
    moment = (now or now_utc()).astimezone(UTC)
    return f"{schedule}/{moment.strftime('%Y%m%dT%H%M%SZ')}-{trigger[0]}{_random.token_hex(3)}"


def interrupt_all(detail: str) -> None:
    """Stop every run this process is executing; their records end ``interrupted``."""
    global _stop_requested
    _stop_requested = detail
    with _active_lock:
        running = list(_active)
    for execution in running:
        execution.interrupt("interrupted", detail)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGINT interrupt the runs of this process instead of killing it."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        interrupt_all(f"the runner received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _coerce_overrides(schedule: Schedule, overrides: dict[str, Any]) -> None:
    if overrides:
        try:
            check_parameters(schedule, overrides, where="-p")
        except ParameterError as exc:
            raise ParameterError(str(exc).replace("`parameters.", "`")) from exc


def run_schedule(
    schedule: Schedule,
    settings: Settings,
    *,
    overrides: dict[str, Any] | None = None,
    trigger: Trigger = "manual",
    scheduled_for: datetime | None = None,
    attempt: int = 1,
    run_id: str | None = None,
    dry_run: bool = False,
    index: RunIndex | None = None,
    start_timeout: float = 60.0,
    not_before: datetime | None = None,
) -> RunRecord | None:
    """Run the schedule's notebook now; return its final record.

    With ``not_before``, the kernel starts at once but the first cell runs at that instant
    (the scheduler pre-starts runs so they begin on time); ``started_at`` is the real start.

    Returns None, running nothing, when ``run_id`` is already in the index (another scheduler
    started it). A manual run with bad parameters or secrets raises ConfigError before any record
    exists; a scheduled one (any other trigger) ends ``failed`` with the error in its record, as
    does every later problem.
    """
    overrides = dict(overrides or {})
    shown = _shown(schedule.file, settings)
    refused: ConfigError | None = None
    try:
        check_parameters(schedule, schedule.parameters, where=shown)
        _coerce_overrides(schedule, overrides)
        secret_values = resolve_secrets(schedule, settings)
    except ConfigError as exc:
        if trigger == "manual":
            raise  # the command line answers: one line, exit 2, no record
        # A fire nobody watches (a secret gone from the environment at 3 a.m.): it gets a
        # failed record, so the run history, the reports and failure notices say so.
        refused, secret_values = exc, {}
    parameters = {**schedule.parameters, **overrides}
    scrubber = Scrubber(secret_values)
    index = index or RunIndex(settings.database)

    started = now_utc()
    run_id = run_id or make_run_id(schedule.name, trigger, scheduled_for, attempt, started)
    output = record_path(settings.runs, run_id)
    record = _new_record(
        schedule,
        settings,
        run_id,
        trigger,
        scheduled_for,
        attempt,
        started,
        parameters=scrubber.node(copy.deepcopy(parameters)),
    )
    token = _random.token_hex(8)  # tags every process of this execution, for killing them
    runner = f"{runner_identity()}/{token}"
    if not index.insert(record, runner=runner):
        log.info("run %s already exists; not starting it again", run_id)
        return None

    runtime = private_runtime_dir()
    outcome = Outcome(
        "failed", {"ename": "RunnerError", "evalue": "the runner stopped", "cell": None}
    )
    execution: Execution | None = None
    nb: Any = None
    try:
        if refused is not None:
            raise refused
        nb = _prepare(schedule, parameters, settings)
        if settings.runs_url:
            # The report is rendered and published when the run ends: build the exporter (a
            # second or two, once per process) while the kernel starts, not after the run.
            # IPython is imported here first: both threads need it (nbconvert, and the kernel
            # start below), and Python 3.11 can fail one of two threads importing a package at
            # once (seen: the run failed with KeyError 'IPython').
            import IPython  # noqa: F401

            threading.Thread(target=_warm_up_reports, name="report-warm-up", daemon=True).start()
        env = _kernel_env(
            schedule, settings, record, runtime, secret_values, scheduled_for, dry_run
        )
        env[TOKEN_VARIABLE] = token
        kernel_name = settings.kernel_name or _kernel_name(nb)
        throttle = _publish_throttle(settings)

        def write(current: Any, running_cell: int | None) -> None:
            _write_record(output, current, record, scrubber, running_cell)
            if throttle is not None and throttle.due():
                _publish_progress(settings, output)

        def started_now() -> None:
            # Only in memory: the first cell must not wait on the index (20 pre-started runs
            # would queue on one database); the next save writes it.
            nonlocal started
            started = now_utc()
            record.started_at = iso(started) or record.started_at

        def heartbeat() -> None:
            if not index.beat(record, runner) and execution is not None:
                # Another scheduler found this run's heartbeat too old and closed it: stop, so
                # the run it starts in its place is the only one.
                execution.interrupt("interrupted", LEASE_LOST)

        pristine = copy.deepcopy(nb)
        for attempt_start_timeout in (start_timeout, min(start_timeout, 30.0)):
            execution = Execution(
                nb=nb,
                run_id=run_id,
                runtime=runtime,
                kernel_name=kernel_name,
                env=env,
                cwd=settings.project,
                scrubber=scrubber,
                max_output=settings.max_output,
                write=write,
                timeout=schedule.timeout,
                start_timeout=attempt_start_timeout,
                heartbeat=heartbeat,
                heartbeat_every=HEARTBEAT_EVERY,
                not_before=not_before,
                on_start=started_now if not_before is not None else None,
            )
            with _active_lock:
                _active.add(execution)
            if _stop_requested is not None:  # asked to stop before the kernel existed
                execution.interrupt("interrupted", _stop_requested)
            try:
                outcome = execution.run()
            finally:
                with _active_lock:
                    _active.discard(execution)
            if not _kernel_start_failed(outcome):
                break
            # A kernel that never answered is the machine's hiccup, not the notebook's failure.
            log.warning("kernel for %s did not start (%s); trying once more", run_id, outcome.error)
            nb = copy.deepcopy(pristine)
    except ConfigError as exc:
        outcome = Outcome(
            "failed", {"ename": type(exc).__name__, "evalue": scrubber.text(str(exc)), "cell": None}
        )
    except BaseException as exc:
        outcome = Outcome(
            "failed", {"ename": type(exc).__name__, "evalue": scrubber.text(str(exc)), "cell": None}
        )
        raise
    finally:
        report = _read_report(runtime)
        remove_runtime_dir(runtime)
        finished = now_utc()
        status = outcome.status
        error = outcome.error
        if status == "succeeded" and report.get("partial"):
            status = "partial"
            # why, where support looks first: `nbcron show`, the report's header, the banner
            reasons = "; ".join(str(r) for r in report["partial"])
            error = {"ename": "Partial", "evalue": reasons, "cell": None}
        record.status = status  # type: ignore[assignment]
        record.error = scrubber.node(error) if error else None
        record.metrics = {k: v for k, v in report.get("metrics", {}).items() if _is_number(v)}
        record.finished_at = iso(finished)
        record.duration_s = round((finished - started).total_seconds(), 3)
        if nb is None:
            nb = _placeholder_notebook(schedule)
        _write_record(output, nb, record, scrubber, None, final=True)
        index.save(record, runner=None)
        log.info("%s %s in %.1fs -> %s", run_id, record.status, record.duration_s, output)
        publish_run(settings, record)
        if schedule.notify is not None:
            from toolkit.notify import notify_run  # only schedules that notify import httpx

            notify_run(schedule, settings, record)  # never raises: the record is already saved
    return record


def _new_record(
    schedule: Schedule,
    settings: Settings,
    run_id: str,
    trigger: Trigger,
    scheduled_for: datetime | None,
    attempt: int,
    started: datetime,
    parameters: dict[str, Any],
) -> RunRecord:
    """Return the record of a run that starts now, status ``running``."""
    return RunRecord(
        run_id=run_id,
        schedule=schedule.name,
        trigger=trigger,
        attempt=attempt,
        status="running",
        scheduled_for=iso(scheduled_for),
        started_at=iso(started) or "",
        finished_at=None,
        duration_s=None,
        notebook=_shown(schedule.notebook, settings),
        output=str(record_path(settings.runs, run_id)),
        parameters=parameters,
        versions=versions(),
    )


def _kernel_start_failed(outcome: Outcome) -> bool:
    if outcome.cells_started or outcome.status != "failed" or outcome.error is None:
        return False
    text = f"{outcome.error.get('ename')} {outcome.error.get('evalue')}"
    return "didn't respond" in text or "Kernel died before replying" in text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(path: Path, settings: Settings) -> str:
    try:
        return str(path.relative_to(settings.project))
    except ValueError:
        return str(path)


def _prepare(schedule: Schedule, parameters: dict[str, Any], settings: Settings) -> Any:
    import nbformat
    from papermill.parameterize import parameterize_notebook

    nb = nbformat.read(schedule.notebook, as_version=4)
    nb.metadata.setdefault("papermill", {})
    for cell in nb.cells:  # what papermill's loader does before it parameterizes
        cell.metadata.setdefault("tags", [])
        cell.metadata.setdefault("papermill", {})
    if parameters:
        nb = parameterize_notebook(nb, parameters, kernel_name=settings.kernel_name)
    else:
        nb.metadata.papermill["parameters"] = {}
    nb.metadata.papermill["input_path"] = _shown(schedule.notebook, settings)
    nb.metadata.papermill["output_path"] = None
    return nb


def _kernel_name(nb: Any) -> str:
    spec = nb.metadata.get("kernelspec") or {}
    return str(spec.get("name") or "python3")


def _kernel_env(
    schedule: Schedule,
    settings: Settings,
    record: RunRecord,
    runtime: Path,
    secret_values: dict[str, str],
    scheduled_for: datetime | None,
    dry_run: bool,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            ENV.RUN_ID: record.run_id,
            ENV.SCHEDULE: schedule.name,
            ENV.SCHEDULED_FOR: iso(scheduled_for) or record.started_at,
            ENV.TRIGGER: record.trigger,
            ENV.ATTEMPT: str(record.attempt),
            ENV.DRY_RUN: "1" if dry_run else "0",
            ENV.PROJECT: str(settings.project),
            ENV.RUNS: str(settings.runs),
            ENV.DATABASE: settings.database,
            ENV.NOTEBOOK: record.notebook,
            ENV.REPORT: str(runtime / "report.json"),
            "NBCRON_KERNEL_DIR": str(runtime),
            ENV.SECRETS: ",".join(sorted(secret_values)),
        }
    )
    env.update(secret_values)
    return env


def _read_report(runtime: Path) -> dict[str, Any]:
    try:
        data = json.loads((runtime / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _placeholder_notebook(schedule: Schedule) -> Any:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": str(schedule.notebook)}
    return nb


def banner_cell(record: RunRecord, running_cell: int | None, with_id: bool = True) -> Any | None:
    """Return the markdown cell that heads a running or unsuccessful run, or None."""
    import nbformat

    err = record.error or {}
    cell = err.get("cell")
    where = f" in cell {cell}" if cell is not None else ""
    what = _code(f"{err.get('ename', '')}: {err.get('evalue', '')}") if err else ""
    head = {
        "running": f"**nbcron: this run is in progress** (cell {_shown_running(running_cell)} "
        f"running). If this notebook still says so long after {record.started_at}, its runner "
        f"(pid {os.getpid()} on {host_name()}) died; the scheduler marks such runs "
        "`interrupted`.",
        "failed": f"**nbcron: this run failed**{where}: {what}",
        "timed_out": f"**nbcron: this run timed out**{where}: {err.get('evalue', '')}. The kernel "
        "and every process it started were stopped.",
        "interrupted": f"**nbcron: this run was interrupted**{where}: {err.get('evalue', '')}. "
        "The kernel and every process it started were stopped.",
        "skipped": f"**nbcron: this run was skipped**: {err.get('evalue', '')}",
        "partial": f"**nbcron: this run ended partial**: {err.get('evalue', '')}. Everything "
        "else it did is committed.",
    }.get(record.status)
    if head is None:
        return None
    detail = (
        f"run `{record.run_id}` · trigger {record.trigger} · attempt {record.attempt} · "
        f"started {record.started_at}"
        + (f" · {record.duration_s:g}s" if record.duration_s is not None else "")
        + f" · host {record.host}"
    )
    cell_node = nbformat.v4.new_markdown_cell(f"> {head}\n>\n> {detail}")
    cell_node.metadata["tags"] = [BANNER_TAG]
    cell_node.metadata["nbcron"] = {"status": record.status}
    cell_node.pop("id", None)
    if with_id:  # cell ids exist from nbformat 4.5 on; older notebooks must not carry one
        cell_node["id"] = "nbcron-banner"
    return cell_node


def _code(text: str) -> str:
    """Return ``text`` as one markdown code span, also when it holds backticks itself."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _shown_running(index: int | None) -> str:
    return "—" if index is None else str(index + 1)


def _write_record(
    path: Path,
    nb: Any,
    record: RunRecord,
    scrubber: Scrubber,
    running_cell: int | None,
    final: bool = False,
) -> None:
    scrubber.node(nb)
    nb.metadata["nbcron"] = scrubber.node(record.to_metadata())
    banner = banner_cell(record, running_cell, with_id=nb.get("nbformat_minor", 0) >= 5)
    doc = dict(nb)
    cells = [c for c in nb.cells if BANNER_TAG not in c.get("metadata", {}).get("tags", [])]
    doc["cells"] = [banner, *cells] if banner is not None else cells
    atomic_write_text(path, notebook_json(doc), fsync=final)


def record_without_running(
    schedule: Schedule,
    settings: Settings,
    index: RunIndex,
    *,
    run_id: str,
    trigger: Trigger,
    scheduled_for: datetime | None,
    attempt: int,
    reason: str,
) -> RunRecord | None:
    """Record a run the scheduler decided not to start (status ``skipped``); None if it exists.

    The source notebook is saved unexecuted under a banner, so the record, like every other,
    lives in a notebook the index can be rebuilt from.
    """
    now = now_utc()
    output = record_path(settings.runs, run_id)
    record = _new_record(
        schedule,
        settings,
        run_id,
        trigger,
        scheduled_for,
        attempt,
        now,
        parameters=dict(schedule.parameters),
    )
    record.status = "skipped"
    record.finished_at = record.started_at
    record.duration_s = 0.0
    record.error = {"ename": "Skipped", "evalue": reason, "cell": None}
    if not index.insert(record):
        return None
    import nbformat

    try:
        nb = nbformat.read(schedule.notebook, as_version=4)
    except Exception:
        nb = _placeholder_notebook(schedule)
    _write_record(output, nb, record, Scrubber({}), None, final=True)
    log.info("%s skipped: %s", run_id, reason)
    publish_run(settings, record)
    return record


def close_dead_run(
    record: RunRecord,
    index: RunIndex,
    reason: str,
    ended: datetime,
    settings: Settings | None = None,
) -> RunRecord:
    """Mark a run whose runner died ``interrupted``, in the index and in its saved notebook.

    With ``settings`` the closed record (and its report) also goes to ``runs_url``.
    """
    import nbformat

    record.status = "interrupted"
    record.error = {"ename": "Interrupted", "evalue": reason, "cell": None}
    record.finished_at = iso(ended)
    started = datetime.fromisoformat(record.started_at)
    record.duration_s = round(max((ended - started).total_seconds(), 0.0), 3)
    path = Path(record.output)
    try:
        nb = nbformat.read(path, as_version=4)
        cells = nb.cells
        running = next(
            (
                i
                for i, c in enumerate(cells)
                if c.get("metadata", {}).get("papermill", {}).get("status") == "running"
            ),
            None,
        )
        if running is not None:
            # Index in the saved notebook: the banner stays on top.
            banner = 1 if cells and BANNER_TAG in cells[0].metadata.get("tags", []) else 0
            record.error["cell"] = running - banner + 1
    except Exception:
        nb = nbformat.v4.new_notebook()
    _write_record(path, nb, record, Scrubber({}), None, final=True)
    index.save(record, runner=None)
    if settings is not None:
        publish_run(settings, record)
    return record


def _warm_up_reports() -> None:
    from toolkit.reports import warm_up

    try:
        warm_up()
    except Exception:  # the final render builds it again and reports what is wrong
        log.debug("warming up the report exporter failed", exc_info=True)


def _publish_throttle(settings: Settings) -> Any:
    """Return the throttle of mid-run publishes, or None when nothing is published."""
    if not settings.runs_url:
        return None
    from toolkit.publish import Throttle

    return Throttle(PUBLISH_EVERY)


def _publish_progress(settings: Settings, output: Path) -> None:
    """Copy a mid-run save to ``runs_url``; a failure waits for the final save."""
    from toolkit.publish import publish

    publish(settings, output, remember=False)


def publish_run(settings: Settings, record: RunRecord) -> None:
    """Copy a run's final record and its HTML report to ``runs_url`` (when set); never raise.

    Then retry a few earlier copies that failed, so a store that was down catches up with the
    next run that ends.
    """
    if not settings.runs_url:
        return
    from toolkit.publish import publish, publish_pending
    from toolkit.reports import render_report

    try:
        publish(settings, Path(record.output))
        render_report(settings, record, force=True)  # publishes the report it renders
        publish_pending(settings)
    except Exception:  # the record is saved; its copy is retried with the next run
        log.warning("publishing run %s to runs_url failed", record.run_id, exc_info=True)
