"""What one file-import run did with each file: `ImportResult`, shown as a table in the notebook."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from toolkit.sources import Skipped

__all__ = ["FileOutcome", "ImportResult"]


@dataclass
class FileOutcome:
    """One file and what happened to it in this run."""

    name: str
    size: int
    action: str
    attempts: int | None = None
    error: str | None = None
    destination: str | None = None


@dataclass
class ImportResult:
    """The files of one `toolkit.import_files` call and what happened to each."""

    dry_run: bool
    files: list[FileOutcome] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    capped: int = 0  # ready files left for the next run by ``limit``
    outputs: list[Any] = field(default_factory=list, repr=False)  # what each ``write`` returned

    def set(self, name: str, size: int, action: str, error: str | None = None) -> None:
        """Return nothing; change the outcome of ``name`` (or add one)."""
        for outcome in reversed(self.files):
            if outcome.name == name:
                outcome.action, outcome.error = action, error
                return
        self.files.append(FileOutcome(name, size, action, error=error))

    def counts(self) -> dict[str, int]:
        """Return how many files ended each way (``imported``, ``quarantined``, ...)."""
        found: Counter[str] = Counter()
        for f in self.files:
            found[f.action.split(" (")[0].split(";")[0]] += 1
        if self.skipped:
            found["skipped"] = len(self.skipped)
        return dict(found)

    def names(self, action: str) -> list[str]:
        """Return the names of the files whose action starts with ``action``."""
        return [f.name for f in self.files if f.action.startswith(action)]

    def table(self) -> pd.DataFrame:
        """Return one row per file: name, size, action, attempts, error, destination."""
        rows = [vars(f) for f in self.files]
        rows += [
            {"name": s.name, "size": s.size, "action": f"skipped: {s.reason}"} for s in self.skipped
        ]
        columns = ["name", "size", "action", "attempts", "error", "destination"]
        return pd.DataFrame.from_records(rows, columns=columns)

    def plan(self) -> pd.DataFrame:
        """Return the plans the dry-run ``write`` calls returned, one after the other."""
        plans = [getattr(o, "plan", None) for o in self.outputs]
        frames = [p for p in plans if isinstance(p, pd.DataFrame)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def summary(self) -> pd.DataFrame:
        """Return the counts as a two-column table (outcome, files)."""
        return pd.DataFrame(sorted(self.counts().items()), columns=["outcome", "files"])

    def _repr_html_(self) -> str:
        """Return the counts and the per-file table as escaped HTML (Jupyter's rich display)."""
        from toolkit.htmlrepr import fields_html, frame_html, plan_display

        title = "import (dry run)" if self.dry_run else "import"
        html = fields_html(title, sorted(self.counts().items()) or [("files", 0)])
        if self.capped:
            html += f"<p>{self.capped:,} ready file(s) left for the next run by limit</p>"
        html += frame_html(self.table().dropna(axis=1, how="all"), css="nbcron-import-files")
        plan = self.plan()
        if self.dry_run and len(plan):
            html += frame_html(plan_display(plan), css="nbcron-plan-table")
        return html
