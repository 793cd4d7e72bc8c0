"""Scaffolding: ``nbcron new NAME --template file-import|api-poll|export``.

Writes ``notebooks/NAME.ipynb`` and ``schedules/NAME.yaml`` from the templates in
``toolkit/scaffold_templates/``: a notebook with a ``parameters`` cell, a markdown note before
each step, the steps of its kind, a summary, and a cell that only runs interactively (the
workbench of a file import; the plan of an API poll; the undelivered report of an export). Run
in JupyterLab the notebook plans and writes nothing; ``nbcron run NAME`` runs it for real, and
``nbcron validate`` accepts it as created. The defaults run on the demo's data (``nbcron demo``):

========================  ==========================================================================
``file-import``           CSV files in ``data/inbox/NAME`` (created empty) -> table ``NAME`` of
                          ``sqlite:///data/acme.db`` by column ``id``; files deleted once committed
``api-poll``              the demo partner API's ``/orders`` -> table ``NAME``, key ``order_id``,
                          cursor ``updated_at``; token from the secret ``NAME_TOKEN``
``export``                the last 7 days of ``orders`` in ``sqlite:///data/acme.db`` ->
                          ``data/outbox/NAME_YYYY-MM-DD.xlsx``
========================  ==========================================================================

Templates carry ``__NAME__`` (and ``__SECRET__``, the API token's secret name) where the
scaffold puts the name. Existing files are never overwritten without ``--force``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

import click

from toolkit.errors import ConfigError

__all__ = ["TEMPLATES", "Scaffold", "Template", "check_name", "command", "render", "scaffold"]

Template = Literal["file-import", "api-poll", "export"]
TEMPLATES: tuple[Template, ...] = get_args(Template)
PLACEHOLDER = "__NAME__"
SECRET_PLACEHOLDER = "__SECRET__"
MAX_NAME = 60  # the name is also a table name; PostgreSQL's identifiers stop at 63 bytes
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Scaffold:
    """What `scaffold` wrote: the notebook, the schedule, folders it made and files it replaced."""

    notebook: Path
    schedule: Path
    folders: tuple[Path, ...] = ()
    replaced: tuple[Path, ...] = ()


def check_name(name: str) -> str:
    """Return ``name`` if it can name a schedule, a notebook and a table; else raise ConfigError.

    Letters, digits and ``_``, starting with a letter: the same name is the schedule's file stem,
    the notebook's, the default table's and part of a secret's (``NAME_TOKEN``).
    """
    if _NAME.match(name) and len(name) <= MAX_NAME:
        return name
    if len(name) > MAX_NAME:
        raise ConfigError(f"name {name!r} is {len(name)} characters long; use at most {MAX_NAME}")
    suggestion = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if suggestion and not suggestion[0].isalpha():
        suggestion = f"x_{suggestion}"
    hint = f" (e.g. {suggestion})" if suggestion else ""
    raise ConfigError(
        f"name {name!r} cannot name a schedule and its notebook; use letters, digits and _, "
        f"starting with a letter{hint}"
    )


def _template(template: str) -> Template:
    if template not in TEMPLATES:
        raise ConfigError(
            f"--template {template!r} is not a template; use one of {', '.join(TEMPLATES)}"
        )
    return template


def _read(filename: str) -> str:
    return (resources.files("toolkit") / "scaffold_templates" / filename).read_text("utf-8")


def render(template: str, name: str) -> tuple[str, str]:
    """Return (notebook JSON, schedule YAML) of ``template`` made out for ``name``."""
    import nbformat

    kind, name = _template(template), check_name(name)
    secret = f"{name.upper()}_TOKEN"

    def fill(text: str) -> str:
        return text.replace(PLACEHOLDER, name).replace(SECRET_PLACEHOLDER, secret)

    nb = nbformat.reads(_read(f"{kind}.ipynb"), as_version=4)
    for cell in nb.cells:
        cell.source = fill(cell.source)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n", fill(_read(f"{kind}.yaml"))


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def scaffold(project: Path, name: str, template: str, *, force: bool = False) -> Scaffold:
    """Return what was written after scaffolding ``notebooks/NAME.ipynb`` and
    ``schedules/NAME.yaml`` in ``project`` from ``template``.

    Raises ConfigError for a bad name or template, or when either file exists and ``force`` is
    not set (nothing is written then).
    """
    notebook_text, schedule_text = render(template, name)
    notebook = project / "notebooks" / f"{name}.ipynb"
    existing = [project / "schedules" / f"{name}{suffix}" for suffix in (".yaml", ".yml")]
    schedule = next((p for p in existing if p.exists()), existing[0])
    present = tuple(p for p in (notebook, schedule) if p.exists())
    if present and not force:
        shown = " and ".join(_shown(p) for p in present)
        raise ConfigError(
            f"{shown} already exist{'s' if len(present) == 1 else ''}; pick another name, "
            "or pass --force to overwrite"
        )
    folders = []
    if template == "file-import":  # the default inbox, so the first run finds its folder
        inbox = project / "data" / "inbox" / name
        if not inbox.is_dir():
            inbox.mkdir(parents=True)
            folders.append(inbox)
    _write(notebook, notebook_text)
    _write(schedule, schedule_text)
    return Scaffold(notebook, schedule, tuple(folders), present)


def _shown(path: Path) -> str:
    """Return ``path`` relative to the current directory when it is below it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@click.command("new")
@click.argument("name")
@click.option(
    "-t",
    "--template",
    metavar="|".join(TEMPLATES),
    default=None,
    help="What kind of integration: " + ", ".join(TEMPLATES) + ".",
)
@click.option("--force", is_flag=True, help="Overwrite the notebook and schedule if they exist.")
@click.pass_context
def command(ctx: click.Context, name: str, template: str | None, force: bool) -> None:
    """Scaffold notebooks/NAME.ipynb and schedules/NAME.yaml from a template."""
    from toolkit.cli import project_settings  # the CLI is above this module

    if template is None:
        raise ConfigError(f"nbcron new {name}: give --template {'|'.join(TEMPLATES)}")
    project = project_settings(ctx).project
    done = scaffold(project, name, template, force=force)
    for path in (done.notebook, done.schedule):
        click.echo(f"{'replaced' if path in done.replaced else 'created'} {_shown(path)}")
    for folder in done.folders:
        click.echo(f"created {_shown(folder)}/")
    click.echo(
        f"next: open {_shown(done.notebook)} in JupyterLab (it only plans there), "
        f"then `nbcron run {name}`"
    )
