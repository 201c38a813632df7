"""Write one benchmark's section of docs/benchmarks.md, leaving the others alone."""
from __future__ import annotations

import re
import statistics
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nEach section is written by the bench/ script it names; "
          "re-run the script to refresh it. Timings are from a shared 2-core CPU machine "
          "(noisy): compare rows measured in the same run, and read medians.\n")


def variant_suffix(backbone: str) -> str:
    """Row, file and section suffix of a backbone other than Lite0 (names without one are Lite0's)."""
    return "" if backbone == "lite0" else f"_{backbone}"


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def mean_std(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def median(values) -> float:
    return statistics.median(list(values))
