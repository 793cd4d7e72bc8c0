"""Progress bars for long loops: shown in JupyterLab, silent on schedule.

``for file in toolkit.progress.progress(files, desc="files"): ...`` draws a ``tqdm.auto`` bar
(a widget in JupyterLab, text in a terminal) when someone is watching: an interactive session in
a Jupyter kernel or a terminal, ``NBCRON_PROGRESS=1`` or ``progress=True``. A scheduled run gets
the iterable back untouched, so no bar, no carriage returns and no widget state end up in its run
record.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from toolkit.context import context

__all__ = ["PROGRESS_VARIABLE", "progress", "wanted"]

PROGRESS_VARIABLE = "NBCRON_PROGRESS"
T = TypeVar("T")


def wanted(progress: bool | None = None) -> bool:
    """Return True when a bar should be drawn: ``progress`` if given, else ``NBCRON_PROGRESS``,
    else whether the code runs interactively (not under nbcron) where someone sees it: in an
    IPython shell or kernel, or with a terminal on stderr (not under pytest's capture)."""
    if progress is not None:
        return progress
    setting = os.environ.get(PROGRESS_VARIABLE, "").strip().lower()
    if setting:
        return setting in {"1", "true", "yes", "on"}
    return context().interactive and _watched()


def _watched() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is not None and ipython.get_ipython() is not None:
        return True
    return sys.stderr is not None and sys.stderr.isatty()


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str | None = None,
    *,
    progress: bool | None = None,
) -> Iterable[T]:
    """Return ``iterable`` wrapped in a ``tqdm.auto`` bar when `wanted`, else ``iterable`` itself.

    ``total`` defaults to ``len(iterable)`` when it has one; ``desc`` labels the bar.
    """
    if not wanted(progress):
        return iterable
    tqdm = importlib.import_module("tqdm.auto").tqdm  # imported only when a bar is drawn
    bar: Iterable[T] = tqdm(iterable, total=total, desc=desc)
    return bar
