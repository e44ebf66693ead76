"""``make bench``: run the benchmark sections and write benchmarks/RESULTS.md with its plots.

python -m benchmarks.run            # quick (section 13 alone: about 15 minutes on a 2-core CPU)
python -m benchmarks.run --full     # everything: all presets and sizes, the 10-minute soak
python -m benchmarks.run --only latency memory
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from benchmarks import (
    decode,
    efficiency,
    gpu,
    inference,
    latency,
    longrun,
    memory,
    multistream,
    original,
    overhead,
    recording,
    report,
    serve,
    triton,
)
from benchmarks.common import (
    BENCH_DIR,
    DEFAULT_CACHE,
    PROFILES,
    Bench,
    CpuReading,
    SectionResult,
    load_average,
    machine_info,
)

SECTIONS = {
    "inference": inference,
    "overhead": overhead,
    "decode": decode,
    "latency": latency,
    "original": original,
    "memory": memory,
    "gpu": gpu,
    "multistream": multistream,
    "longrun": longrun,
    "recording": recording,
    "triton": triton,
    "serve": serve,
    "efficiency": efficiency,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Measure epic-stream (inference, pipeline overhead, decoding, live latency, "
        "the original project's loop, memory, GPU) and write RESULTS.md with plots.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--full",
        action="store_true",
        help="everything: all presets and sizes, more runs, the 10-minute memory soak",
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, seconds per section: checks the harness works (figures meaningless)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SECTIONS),
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where RESULTS.md, results.json and the plots go (default: benchmarks/; "
        "with --smoke a temporary folder)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"exported models and encoded videos, reused between runs (default {DEFAULT_CACHE})",
    )
    return parser


def run_section(bench: Bench, key: str) -> SectionResult:
    module = SECTIONS[key]
    before = load_average()
    cpu = CpuReading.now()
    start = time.perf_counter()
    try:
        result = module.run(bench)
    except Exception:  # one failed section must not lose the others' figures
        result = SectionResult(key, module.TITLE, error=traceback.format_exc(limit=-4))
    result.seconds = time.perf_counter() - start
    result.load = (before, load_average())
    result.others = CpuReading.now().others_since(cpu)
    return result


_previous: dict[Path, list[SectionResult]] = {}


def merged(out: Path, results: list[SectionResult]) -> list[SectionResult]:
    """``results``, and the sections of the run before in ``out`` that this run did not measure
    (``--only``), each in its place in the section order and marked with the run it came from."""
    if out not in _previous:
        _previous[out] = report.previous_sections(out)
    done = {r.key for r in results}
    kept = [s for s in _previous[out] if s.key not in done and s.key in SECTIONS]
    if not kept:
        return results
    order = list(SECTIONS)
    return sorted([*kept, *results], key=lambda s: order.index(s.key))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    profile = PROFILES["full" if args.full else "smoke" if args.smoke else "quick"]
    out = args.output or (
        Path(tempfile.mkdtemp(prefix="epic-bench-smoke-")) if args.smoke else BENCH_DIR
    )
    keys = args.only or list(SECTIONS)
    console = Console(stderr=True)
    started = time.perf_counter()
    machine = machine_info()
    results: list[SectionResult] = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bench = Bench(profile, out, args.cache, progress)
        overall = progress.add_task(f"make bench ({profile.name})", total=len(keys))
        try:
            for key in keys:
                result = run_section(bench, key)
                if args.only:
                    when = time.strftime("%Y-%m-%d %H:%M %Z")
                    result.run = (
                        f"`python -m benchmarks.run{' --full' if args.full else ''} --only "
                        f"{' '.join(args.only)}` ({profile.name} mode) on {when}"
                    )
                result.machine = machine
                results.append(result)
                status = "[red]failed[/red]" if result.error else "done"
                progress.console.log(f"{result.title}: {status} in {result.seconds:.0f} s")
                progress.advance(overall)
                # Written after every section, so an interrupted run keeps what it measured.
                report.write(
                    out, profile, machine, merged(out, results), time.perf_counter() - started
                )
        finally:
            bench.close()
    path = report.write(out, profile, machine, merged(out, results), time.perf_counter() - started)
    failed = [r.title for r in results if r.error]
    missed = [
        f"{r.title.split(':')[0]}: {t.name}" for r in results for t in r.targets if t.met is False
    ]
    console.print(f"Wrote {path} ({(time.perf_counter() - started) / 60:.1f} min).")
    if missed:
        console.print("Targets missed (causes in RESULTS.md): " + "; ".join(missed))
    if failed:
        console.print("[red]Sections failed:[/red] " + "; ".join(failed))
        return 1
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
