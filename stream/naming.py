"""Stream names: ``--source NAME=SRC``, or a name made from the source itself.

A name appears in the events (``"stream"`` on every line), in ``--record`` paths (``{stream}``), on
the overlay, in the terminal and in the window, so it is short, unique and safe in a file name:
``[A-Za-z0-9_.-]+``. An unnamed source is named after its file stem, its frame folder, its camera
index (``webcam0``) or its host, with ``-2``, ``-3`` ... added where two would collide.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from stream.errors import OptionError
from stream.source import SourceKind, SourceSpec, parse_source

NAME = re.compile(r"[A-Za-z0-9_.-]+")
_NAMED = re.compile(r"([^=/\\:]+)=(.+)", re.DOTALL)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class NamedSource:
    """One ``--source``: the stream's name, what the user typed and what it names."""

    name: str
    text: str
    spec: SourceSpec


def split_name(text: str) -> tuple[str | None, str]:
    """``"door=rtsp://cam/1"`` -> ``("door", "rtsp://cam/1")``; a source without a name -> None.

    A file that exists under the whole text (``a=b.mp4``) is a source, not a name; so is a URL
    whose query holds ``=`` (the name may contain no ``:``).
    """
    match = _NAMED.fullmatch(text)
    if match is None or Path(text).exists():
        return None, text
    name, source = match.group(1), match.group(2)
    if not NAME.fullmatch(name):
        raise OptionError(
            f"--source {text}: stream name '{name}' may hold only letters, digits, '_', '.' and '-'"
        )
    return name, source


def default_name(spec: SourceSpec) -> str:
    """A name for an unnamed source (before making it unique)."""
    if spec.kind is SourceKind.CAMERA:
        return f"webcam{spec.target}"
    if spec.kind is SourceKind.URL:
        raw = urlsplit(str(spec.target)).hostname or "camera"
    elif spec.kind is SourceKind.FOLDER and spec.frames:
        target = Path(str(spec.target))
        raw = target.name if target.is_dir() else Path(spec.frames[0]).parent.name
    else:
        raw = Path(str(spec.target)).stem
    return _UNSAFE.sub("_", raw).strip("_") or "stream"


def name_sources(texts: Sequence[str]) -> list[NamedSource]:
    """Parse every ``--source`` and give each stream its unique name (explicit names first)."""
    parsed = [split_name(str(text).strip()) for text in texts]
    taken: set[str] = set()
    for name, _ in parsed:
        if name is None:
            continue
        if name in taken:
            raise OptionError(
                f"stream name '{name}' is given to two --source options; names must be unique"
            )
        taken.add(name)
    named: list[NamedSource] = []
    for name, text in parsed:
        spec = parse_source(text)
        if name is None:
            base = default_name(spec)
            name, k = base, 2
            while name in taken:
                name, k = f"{base}-{k}", k + 1
            taken.add(name)
        named.append(NamedSource(name, text, spec))
    return named
