"""``make bench``: epic-stream's performance figures, measured side by side on this machine.

``python -m benchmarks.run`` runs the sections (inference, pipeline overhead, decode-bound, live
latency, the original project's loop, memory, GPU) and writes ``benchmarks/RESULTS.md`` with the
machine description, the figures (median and spread over several runs) and PNG plots.
"""
