"""``epic-train`` / ``python -m train``: see :mod:`train.cli`.

DDP relaunches this same module in each worker process (``python -m train.__main__ ARGS``).
"""

from __future__ import annotations

import sys

from train.cli import main


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
