"""Training-data mistakes through ``epic-train fit``: one line naming the file or CSV row, exit 2,
no traceback, even when the bad frame is only found by a DataLoader worker mid-run.

The data module's own tests (test_data_errors.py) pin each message; these prove the CLI boundary
carries them to the user intact.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from data_miniature import VAL_COLUMNS_A, write_csv, write_layout_a
from reliability_util import ROOT, one_line_error

from train.cli import main
from train.data import frame_name

CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  enable_model_summary: false
  enable_progress_bar: false
  logger: false
model:
  preset: tiny
  arch: {{embed_dim: 16, depth: 1, num_heads: 2, patch_size: 8}}
data:
  data_path: {data}
  num_frames: 4
  image_size: 16
  clip_seconds: 1.0
  fps: 10
  batch_size: 2
  num_workers: {workers}
"""


def _edit_row(path: Path, index: int, **changes) -> None:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[index].update(changes)
    write_csv(path, list(rows[0]), rows)


def _missing_frames(root: Path) -> str:
    _edit_row(root / "train_action_classes.csv", 1, video_id="P01_99")
    return f"{root / 'train_action_classes.csv'}:3"


def _corrupt_jpeg(root: Path) -> str:
    bad = root / "val/P03/P03_01" / frame_name(5)
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    return str(bad)


def _unknown_class(root: Path) -> str:
    _edit_row(root / "train_action_classes.csv", 2, action_class="close bag")
    return f"{root / 'train_action_classes.csv'}:4"


def _empty_split(root: Path) -> str:
    write_csv(root / "val_action_classes.csv", VAL_COLUMNS_A, [])
    return str(root / "val_action_classes.csv")


def _names_not_a_mapping(root: Path) -> str:
    (root / "class_names.json").write_text(json.dumps(["open bag", "take bag"]))
    return str(root / "class_names.json")


@pytest.mark.parametrize(
    ("breaks", "workers"),
    [
        (_missing_frames, 0),
        (_corrupt_jpeg, 1),  # found by a DataLoader worker process during the sanity check
        (_unknown_class, 0),
        (_empty_split, 0),
        (_names_not_a_mapping, 0),
    ],
    ids=["missing frames", "corrupt jpeg", "unknown class", "empty split", "names not a mapping"],
)
def test_a_data_mistake_is_one_line_naming_it(tmp_path, capsys, breaks, workers):
    root = write_layout_a(tmp_path / "data")
    named = breaks(root)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(data=root, workers=workers))
    rc = main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")])
    assert rc == 2
    line = one_line_error(capsys.readouterr().err, "epic-train")
    assert named in line


LOADER_AFTER_OPENCV = """
import sys
import cv2
import numpy as np
sys.path.insert(0, {tests!r})
from data_miniature import write_layout_a
from train.data import EpicKitchensDataModule

# The process has used OpenCV's thread pool (a notebook that looked at frames, an earlier test).
frame = np.zeros((1500, 1500, 3), np.uint8)
for _ in range(3):
    cv2.GaussianBlur(cv2.resize(frame, (900, 900)), (5, 5), 0)
dm = EpicKitchensDataModule({root!r}, num_frames=4, image_size=16, clip_seconds=1.0, fps=10.0,
                            num_workers=2, batch_size=2)
dm.setup("validate")
clips, labels = next(iter(dm.val_dataloader()))
print("batch", tuple(clips.shape))
"""


def test_loader_workers_start_after_the_process_used_opencv_threads(tmp_path):
    """Forked workers once called cv2.setNumThreads and hung forever before their first batch
    when the parent had run OpenCV's pool. A hang would be a timeout here, not a stuck suite."""
    root = write_layout_a(tmp_path / "data")
    script = textwrap.dedent(LOADER_AFTER_OPENCV).format(tests=str(ROOT / "tests"), root=str(root))
    # Its own session, so that a hang is ended with its workers, not just the parent.
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the DataLoader workers hung")
    assert proc.returncode == 0, err[-2000:]
    assert "batch (2, 4, 16, 16, 3)" in out
