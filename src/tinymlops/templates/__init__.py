"""Project templates: ``tinymlops init DIR --template NAME`` scaffolds a runnable project.

A project is ``configs/pipeline.yaml`` + ``configs/models.py`` (the builder the config names), a sample dataset
in ``data/`` generated here from a seed (in the format the template's real data would have, so the project runs
offline at once), a README and a ``.gitignore``. The template files live in ``files/`` (package data); this module
fills in the project name and writes everything into a temporary directory beside ``DIR`` first, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tinymlops.errors import UsageError

#: template name -> what the project does (shown by --help and in the project's README)
TEMPLATES: dict[str, str] = {
    "tabular": "classify the condition of an air-conditioning unit from one CSV row of readings (MLP)",
    "timeseries": "recognise an activity from windows of a wrist accelerometer's CSV log (window stats + MLP)",
    "audio": "tell background, beeps, chirps and knocks apart in 1 s WAV clips (log-mel + CNN)",
    "image": "recognise the shape of a part on a conveyor belt in small PNG pictures (CNN)",
}

_DATA_LAYOUT = {
    "tabular": "hvac.csv: one row per reading, label column `condition`",
    "timeseries": "activity.csv: timestamp, session, acc_x/y/z at 50 Hz, label column `activity`",
    "audio": "sounds/<class>/*.wav: one folder per class, 8 kHz mono clips",
    "image": "shapes/<class>/*.png: one folder per class, 48x48 RGB pictures",
}

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass
class Scaffold:
    """What ``scaffold`` wrote."""

    directory: str
    template: str
    project: str
    files: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    next_steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_name(directory: Path, name: str | None = None) -> str:
    """Return the project name: ``name``, else the directory's name made lowercase with dashes.

    Raises:
        UsageError: ``name`` is not lowercase letters, digits and dashes starting with a letter (it names the MLflow
            experiment and registered model).
    """
    if name is not None:
        if not _NAME.match(name):
            raise UsageError(f"--name {name!r}: expected lowercase letters, digits and dashes, starting with a "
                             "letter, at most 63 characters")
        return name
    slug = re.sub(r"[^a-z0-9]+", "-", directory.resolve().name.lower()).strip("-")
    slug = re.sub(r"^[^a-z]+", "", slug)[:63].rstrip("-")
    return slug or "my-project"


def _check_directory(directory: Path, force: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and not force:
        entries = sorted(p.name for p in directory.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UsageError(f"{directory}: directory is not empty ({len(entries)} entries: {shown}); choose a new "
                             "directory or pass --force to overwrite the template's files (other files are kept)")
    existing = next(p for p in (directory.resolve(), *directory.resolve().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UsageError(f"{directory}: cannot create it ({existing} is not a writable directory)")


def _render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    leftover = re.search(r"\{\{\w+\}\}", text)
    if leftover:  # a template file names a value this module does not fill: a bug in the package
        raise RuntimeError(f"template placeholder {leftover.group(0)} not filled")
    return text


def _write_files(template: str, root: Path, values: dict[str, str]) -> list[str]:
    """Render the common and the template's files into ``root``; return their relative paths."""
    files = resources.files("tinymlops.templates") / "files"
    common, own = files / "common", files / template
    values = {**values, "data_section": (own / "data.md.tmpl").read_text(encoding="utf-8").strip()}
    out = {
        ".gitignore": (common / "gitignore.tmpl").read_text(encoding="utf-8"),
        "README.md": (common / "README.md.tmpl").read_text(encoding="utf-8"),
        "configs/pipeline.yaml": (own / "configs" / "pipeline.yaml.tmpl").read_text(encoding="utf-8"),
        "configs/models.py": (own / "configs" / "models.py.tmpl").read_text(encoding="utf-8"),
    }
    for rel, text in out.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_render(text, values), encoding="utf-8")
    return list(out)


def _move_into(staging: Path, directory: Path) -> None:
    """Move the staged tree into ``directory`` (a rename if it does not exist, else file by file)."""
    if not directory.exists():
        staging.rename(directory)
        return
    moves = [(src, directory / src.relative_to(staging)) for src in sorted(staging.rglob("*")) if src.is_file()]
    for _, dst in moves:  # every conflict first: nothing is moved unless everything can be
        if dst.is_dir():
            raise UsageError(f"{dst}: is a directory; the template writes a file there")
        for up in dst.parents:
            if up == directory:
                break
            if up.exists() and not up.is_dir():
                raise UsageError(f"{up}: is a file; the template writes a directory there")
    for src, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.replace(dst)


def scaffold(directory: str | Path, template: str, *, name: str | None = None, force: bool = False,
             seed: int = 0) -> Scaffold:
    """Create a runnable project in ``directory`` from ``template``; return what was written.

    Args:
        directory: the project directory; created if missing; must be empty unless ``force``.
        template: one of :data:`TEMPLATES`.
        name: project name (MLflow experiment, registered model ``<name>-classifier``); default from the directory.
        force: write into a non-empty directory, overwriting the files the template writes (others are kept).
        seed: seed of the sample dataset generator.

    Raises:
        UsageError: unknown template, a non-empty directory without ``force``, a bad name, an unwritable place.
    """
    from tinymlops.templates import samples

    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")
    directory = Path(directory)
    _check_directory(directory, force)
    project = project_name(directory, name)
    values = {"project": project, "template": template, "summary": TEMPLATES[template] + ".",
              "data_layout": _DATA_LAYOUT[template],
              "module_name": project.replace("-", "_")}
    parent = directory.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{directory.resolve().name}.init-{secrets.token_hex(4)}"
    staging.mkdir()  # beside DIR (same file system: the final move is a rename); mode from the umask
    try:
        files = _write_files(template, staging, values)
        data_rel, writer = samples.WRITERS[template]
        data = writer(staging / data_rel, seed=seed)
        data["path"] = data_rel
        _move_into(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Scaffold(directory=str(directory), template=template, project=project, files=[*files, data_rel],
                    data=data, next_steps=[f"cd {directory}", "tinymlops validate configs/pipeline.yaml",
                                           "tinymlops run"])
