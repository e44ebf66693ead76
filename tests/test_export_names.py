"""Class-names files: the three formats, and the mistakes users make with them."""

from __future__ import annotations

import json

import pytest

from export.errors import ClassNamesError
from export.names import (
    check_class_names,
    generic_class_names,
    names_from_value,
    read_class_names,
)
from stream.errors import EpicError


def test_json_dict_name_to_id_as_the_original_class_names_json(tmp_path):
    path = tmp_path / "class_names.json"
    path.write_text(json.dumps({"take bag": 1, "open bag": 0, "put bag": 2}))
    assert read_class_names(path) == ["open bag", "take bag", "put bag"]


def test_json_dict_id_to_name_is_read_too(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"1": "take", "0": "open"}))
    assert read_class_names(path) == ["open", "take"]


def test_json_list_keeps_its_order(tmp_path):
    path = tmp_path / "names.json"
    path.write_text(json.dumps(["zeta", "alpha", "mid dle"]))
    assert read_class_names(path) == ["zeta", "alpha", "mid dle"]


def test_text_one_name_a_line_ignores_trailing_blank_lines_and_spaces(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("abseiling\r\n  air drumming \nanswering questions\n\n\n")
    assert read_class_names(path) == ["abseiling", "air drumming", "answering questions"]


def test_json_without_json_suffix_is_detected(tmp_path):
    path = tmp_path / "names"
    path.write_text('["a", "b"]')
    assert read_class_names(path) == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"a": 0, "b": 2}', ".json", "class ids must be 0..1"),
        ('{"a": 0, "b": 0}', ".json", "class ids must be 0..1"),
        ('{"a": "x"}', ".json", "map each class name to its integer id"),
        ("[1, 2]", ".json", "list of names"),
        ("[", ".json", "not valid JSON"),
        ("a\n\nb\n", ".txt", "line 2 is empty"),
        ("a\nb\na\n", ".txt", "repeated: a"),
        ("\n\n", ".txt", "no class names"),
    ],
)
def test_malformed_files_say_what_is_wrong(tmp_path, content, suffix, message):
    path = tmp_path / f"names{suffix}"
    path.write_text(content)
    with pytest.raises(ClassNamesError, match=message) as info:
        read_class_names(path)
    assert isinstance(info.value, EpicError)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ClassNamesError, match="not found"):
        read_class_names(tmp_path / "nope.txt")


def test_count_must_match_the_head():
    check_class_names(["a", "b"], 2, "names.txt")
    with pytest.raises(ClassNamesError, match="has 3 class names but the model's head has 2"):
        check_class_names(["a", "b", "c"], 2, "names.txt")


def test_generic_names():
    assert generic_class_names(3) == ["class_0", "class_1", "class_2"]


def test_names_stored_in_a_checkpoint_as_list_or_dict():
    assert names_from_value(["a", "b"], "ckpt") == ["a", "b"]
    assert names_from_value({"b": 1, "a": 0}, "ckpt") == ["a", "b"]
    with pytest.raises(ClassNamesError, match="list of strings"):
        names_from_value("a,b", "ckpt")
