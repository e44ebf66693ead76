"""epic-export on files that are not checkpoints: one line saying what the file is, without
torch's advice to unpickle it unsafely. (Names of the wrong length, unwritable outputs and
--debug are in test_export_cli.py; docs/reliability.md maps every case to its test.)
"""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from reliability_util import one_line_error

from export.__main__ import main


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


def _python_objects(path):  # a training script's dump: tensors next to arbitrary objects
    torch.save({"weights": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (_random_bytes, "(not a file written by torch.save)"),
        (
            _python_objects,
            "(it holds Python objects besides tensors, which are only unpickled "
            "from an epic-train .ckpt: unpickling them could run code)",
        ),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_named_and_explained(tmp_path, capsys, write, reason):
    path = tmp_path / "weights.pyth"
    write(path)
    output = tmp_path / "m.onnx"
    rc = main(["--checkpoint", str(path), "--output", str(output)])
    line = one_line_error(capsys.readouterr().err, "epic-export")
    assert rc == 2
    assert line.startswith(
        f"epic-export: error: {path}: cannot be read as a PyTorch checkpoint {reason}"
    )
    assert "weights_only" not in line
    assert not output.exists()


def test_random_bytes_named_ckpt_are_not_unpickled(tmp_path, capsys, monkeypatch):
    path = tmp_path / "best.ckpt"
    path.write_bytes(b"definitely not a checkpoint" * 100)

    def unpickle(*args, **kwargs):
        raise AssertionError("torch.load was asked to read a file that torch.save never wrote")

    monkeypatch.setattr(torch, "load", unpickle)
    assert main(["--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "(not a file written by torch.save)" in one_line_error(
        capsys.readouterr().err, "epic-export"
    )
