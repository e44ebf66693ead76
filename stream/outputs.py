"""Output paths, checked before anything is opened: an output never destroys an input.

``epic-stream --source v.mp4 --record v.mp4`` would replace the video it reads with the first
frames of its own recording. So, before the model loads or a source opens, every output
(``--record`` per stream, ``--events``) is resolved (relative paths, ``..`` and symlinks, and
hard links once both exist) and refused with one line when it is a source file, lies in a frame
folder that a source lists or globs, or is the same file as another output. Replacing an existing,
unrelated file is allowed, and said once per file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from stream.errors import OptionError, OutputError
from stream.naming import NamedSource
from stream.source import SourceKind

STREAM_FIELD = "{stream}"


def record_paths(template: Path | None, names: Sequence[str]) -> dict[str, Path]:
    """Each stream's recording: ``--record`` with ``{stream}`` replaced by the stream's name.

    With several streams the template must contain ``{stream}``, or they would all write one file.
    """
    if template is None:
        return {}
    text = str(template)
    if len(names) > 1 and STREAM_FIELD not in text:
        raise OptionError(
            f"--record {text}: with {len(names)} streams the path must contain {STREAM_FIELD} "
            f"(for example out/{STREAM_FIELD}.mp4), so that each stream gets its own recording"
        )
    return {name: Path(text.replace(STREAM_FIELD, name)) for name in names}


def _resolved(path: Path | str) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(path)))))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_outputs(
    sources: Sequence[NamedSource],
    outputs: Sequence[tuple[str, Path]],
    say: Callable[[str], None],
) -> None:
    """Refuse outputs that would overwrite a source, land in a source's frame folder, or collide.

    ``outputs`` are ``(option, path)`` pairs such as ``("--record", Path("out/a.mp4"))``.
    """
    input_files: dict[Path, str] = {}
    frame_folders: dict[Path, str] = {}
    for source in sources:
        spec = source.spec
        if spec.kind is SourceKind.FILE:
            input_files[_resolved(str(spec.target))] = source.text
        elif spec.kind is SourceKind.FOLDER:
            for frame in spec.frames:
                input_files[_resolved(frame)] = source.text
                frame_folders[_resolved(frame).parent] = source.text
    seen: dict[Path, tuple[str, Path]] = {}
    for option, path in outputs:
        where = _resolved(path)
        for source_file, text in input_files.items():
            if where == source_file or _same_file(where, source_file):
                raise OutputError(
                    f"{option} {path} is the source video of --source {text}: writing it would "
                    "destroy the input; choose another output file"
                )
        if where.parent in frame_folders:
            raise OutputError(
                f"{option} {path} is inside the frame folder that --source "
                f"{frame_folders[where.parent]} reads; write it to another folder"
            )
        for other, (other_option, other_path) in seen.items():
            if where == other or _same_file(where, other):
                raise OutputError(
                    f"{option} {path} and {other_option} {other_path} are the same file; give "
                    "each output a file of its own"
                )
        seen[where] = (option, path)
    for where, (option, path) in seen.items():
        if where.is_file():
            say(f"{option} {path} exists and will be replaced")
