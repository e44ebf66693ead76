"""Command line for stream (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="epic-stream")


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
