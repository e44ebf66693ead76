"""stream/ must install and run with the runtime dependencies alone: no torch, lightning or timm."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import stream

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = (
    "torch",
    "torchvision",
    "lightning",
    "pytorch_lightning",
    "timm",
    "einops",
    "torchmetrics",
)

# Runs in a fresh interpreter where importing any training package fails, as it would after a
# plain `pip install .`.
BLOCKER = f"""
import importlib.abc, sys
FORBIDDEN = {FORBIDDEN!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in FORBIDDEN:
            raise ImportError(f'blocked import of {{name}}: stream/ must not need it')
        return None
sys.meta_path.insert(0, Block())
"""


def stream_modules() -> list[str]:
    return sorted(
        f"stream.{m.name}" for m in pkgutil.iter_modules(stream.__path__) if m.name != "__main__"
    )


def test_every_stream_module_imports_without_torch():
    modules = stream_modules()
    assert "stream.preprocess" in modules and "stream.contract" in modules
    code = (
        BLOCKER
        + "\n".join(f"import {m}" for m in modules)
        + f"""
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})
assert not loaded, loaded
print('ok', len({modules!r}))
"""
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_epic_stream_help_runs_without_torch():
    code = (
        BLOCKER
        + "import runpy, sys; sys.argv = ['epic-stream', '--help']\nrunpy.run_module('stream', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "epic-stream" in result.stdout


def test_blocker_really_blocks():
    # Guards the two tests above: if the blocker stopped working they would pass vacuously.
    code = BLOCKER + "import torch"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "blocked import of torch" in result.stderr
