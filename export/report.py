"""The short table epic-export prints after a successful export."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from export.checkpoint import ExportReport
from export.onnx import PARITY_TOLERANCE, Parity


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.1f} kB"


def _parity(p: Parity) -> str:
    batches = " + ".join(str(b) for b in p.batches)
    agree = round(p.top1_agreement * p.clips)
    text = f"max |Δp| {p.max_abs_diff:.1e} on {p.clips} random clips (batches {batches}); top-1 {agree}/{p.clips}"
    if p.precision == "fp32":
        text += f"; limit {PARITY_TOLERANCE:.0e}"
    return text


def _values(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:g}" for v in values)


def render_report(report: ExportReport) -> Table:
    c, arch = report.contract, report.arch
    attention = getattr(arch["attention_type"], "value", arch["attention_type"])
    table = Table(
        title=Text(f"epic-export: {report.output}"), show_header=False, title_justify="left"
    )
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()

    def row(label: str, value: str) -> None:
        table.add_row(label, Text(value))  # Text: shapes like [batch, 8, ...] are not rich markup

    precision = report.precision.value
    if report.precision.value == "int8":
        precision += " static" if report.agreement is not None else " dynamic"
    row("file", f"{report.output} ({_size(report.graph.size_bytes)}, {precision})")
    row(
        "from",
        f"{report.checkpoint} ({report.kind}): TimeSformer {attention}, embed {arch['embed_dim']}, "
        f"depth {arch['depth']}, heads {arch['num_heads']}",
    )
    row("opset", str(report.graph.opset))
    for info in report.graph.inputs:
        row("input", str(info))
    for info in report.graph.outputs:
        row("output", str(info))
    row("classes", f"{c.num_classes} ({report.sources['class_names']})")
    row(
        "clip",
        f"{c.num_frames} frames of {c.image_size}x{c.image_size} over {c.clip_seconds:.3g} s "
        f"({report.sources['clip_seconds']})",
    )
    row(
        "normalize",
        f"mean {_values(report.mean)}, std {_values(report.std)} ({report.sources['normalization']})",
    )
    for p in report.parity:
        row(f"ORT vs torch {p.precision}", _parity(p))
    if report.agreement is not None:
        a = report.agreement
        row(
            f"{a.precision} vs fp32",
            f"top-1 agrees on {a.agreeing}/{a.clips} calibration clips ({a.share:.1%})",
        )
    timing = ", ".join(f"{k} {v:.1f}" for k, v in report.ms_per_clip.items())
    row("ORT CPU ms/clip", f"{timing} (batch 1, median, this machine)")
    if report.triton_dir is not None:
        row("triton", str(report.triton_dir))
    row("took", f"{report.seconds:.0f} s")
    return table
