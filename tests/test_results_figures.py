"""The committed results' figure tables are what their scripts make from the committed raw results."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from support.launch import ROOT, load_script

WIDTH = ROOT / "docs" / "results" / "vgg_width"


@pytest.fixture(scope="module")
def width_plot() -> ModuleType:
    return load_script("analysis/width_plot.py")


def test_gap_vs_width_table_is_made_from_the_committed_results(width_plot: ModuleType, tmp_path: Path) -> None:
    """Regenerating gap_vs_width.md from w16/w24/w32.jsonl gives the committed file, byte for byte (the table prints
    4 decimals of statistics of at most 12 float64 pairs, far coarser than any rounding difference between CPUs)."""
    files = [WIDTH / f"w{w}.jsonl" for w in (16, 24, 32)]
    out = tmp_path / "gap.md"
    width_plot.main([*map(str, files), "--png", str(tmp_path / "gap.png"), "--md", str(out)])
    assert out.read_text() == (WIDTH / "gap_vs_width.md").read_text()
    assert (tmp_path / "gap.png").stat().st_size > 0


def test_width_of_rejects_a_file_of_mixed_widths(width_plot: ModuleType, tmp_path: Path) -> None:
    lines = (WIDTH / "w16.jsonl").read_text().splitlines()[:2]
    mixed = [json.loads(line) for line in lines]
    mixed[1]["config"]["args"] = [a if not a.startswith("--model.width=") else "--model.width=24"
                                  for a in mixed[1]["config"]["args"]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in mixed))
    results = width_plot.load_results(path)
    with pytest.raises(ValueError, match=r"expected one --model.width=W.*\[16, 24\]"):
        width_plot.width_of(results)
