"""Class-names files: the three formats users have, read into one ordered list.

* JSON dict name -> id, as the original project's ``class_names.json`` (``{"open bag": 0}``);
  a dict id -> name (``{"0": "open bag"}``) is read too, since Kinetics label maps come both ways;
* JSON list of names, in class-id order;
* text, one name a line, in class-id order.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from export.errors import ClassNamesError


def generic_class_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def _from_dict(data: dict, where: str) -> list[str]:
    if all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        by_id = {v: str(k) for k, v in data.items()}
    elif all(isinstance(v, str) and str(k).isdigit() for k, v in data.items()):
        by_id = {int(k): v for k, v in data.items()}
    else:
        raise ClassNamesError(
            f"{where}: a JSON object must map each class name to its integer id "
            '(like {"open bag": 0, "take bag": 1})'
        )
    if sorted(by_id) != list(range(len(data))):
        raise ClassNamesError(
            f"{where}: class ids must be 0..{len(data) - 1}, each used once; got "
            f"{sorted(by_id)[:10]}{' ...' if len(by_id) > 10 else ''}"
        )
    return [by_id[i] for i in range(len(by_id))]


def names_from_value(value: object, where: str) -> list[str]:
    """Class names as a checkpoint may store them: a list in class-id order, or a dict as above."""
    if isinstance(value, dict):
        return _from_dict(value, where)
    if isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
        return [n.strip() for n in value]
    raise ClassNamesError(f"{where}: class names must be a list of strings or a dict name -> id")


def _from_text(text: str, where: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line:
            raise ClassNamesError(f"{where}: line {number} is empty; give one class name a line")
    return lines


def read_class_names(path: str | Path) -> list[str]:
    """Read a class-names file in any of the three formats; names come back in class-id order."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClassNamesError(f"class-names file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassNamesError(f"cannot read class-names file {path}: {exc}") from None
    stripped = text.lstrip("\ufeff").strip()
    if path.suffix.lower() == ".json" or stripped[:1] in ("[", "{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ClassNamesError(f"{where}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            names = _from_dict(data, where)
        elif isinstance(data, list) and all(isinstance(n, str) for n in data):
            names = [n.strip() for n in data]
        else:
            raise ClassNamesError(f"{where}: JSON must be a list of names or a dict name -> id")
    else:
        names = _from_text(stripped, where)
    if not names:
        raise ClassNamesError(f"{where}: no class names in the file")
    if any(not n for n in names):
        raise ClassNamesError(f"{where}: class names must not be empty")
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ClassNamesError(
            f"{where}: class names must be unique; repeated: {', '.join(duplicates[:5])}"
        )
    return names


def check_class_names(names: list[str], num_classes: int, source: str) -> None:
    """The contract pairs name i with score i, so the count must be the head's exactly."""
    if len(names) != num_classes:
        raise ClassNamesError(
            f"{source} has {len(names)} class names but the model's head has {num_classes} classes; "
            f"give a names file with exactly {num_classes} names, in class-id order"
        )
