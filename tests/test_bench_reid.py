"""`./run.sh bench reid` (bench/reid.py) at its smoke budget on real ORL faces: every row runs through
the engine, the table has its rows and columns, and the numbers are rates in [0, 1]."""
from __future__ import annotations

import json
import re

import pandas as pd

from bench import reid

METRIC_COLUMNS = ["MAP@5 (test)", "top-1 known: first known id right", "top-1 known: first answer right",
                  "never-seen: new_whale first", "trivial MAP@5", "OOF MAP@5"]


def _table(markdown: str, section: str) -> pd.DataFrame:
    """The markdown table under `## section` as strings."""
    body = markdown.split(f"## {section}\n", 1)[1]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    lines = lines[: next((i for i, line in enumerate(lines[2:], 2) if not line.startswith("|")), len(lines))]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def test_reid_bench_smoke_on_orl(shared_data, tmp_path):
    out = tmp_path / "bench"
    argv = ["datasets=orl", "budget=smoke", f"out={out}", "threads=1"]
    assert reid.main(argv) == 0
    text = (out / "reid.md").read_text()
    table = _table(text, "orl")
    assert table.configuration.tolist() == ["trivial baseline", *(row.title for row in reid.ROWS.values())]
    assert set(METRIC_COLUMNS + ["CPU s", "chosen on OOF"]) <= set(table.columns)
    assert (table.status == "ok").all(), table.status.tolist()
    for column in METRIC_COLUMNS:
        values = table[column].str.replace("*", "", regex=False)
        numbers = values[values != "–"].astype(float)
        assert ((numbers >= 0) & (numbers <= 1)).all(), (column, values.tolist())
        assert len(numbers) == len(table) - (column == "OOF MAP@5"), column  # the baseline has no OOF
    for column in METRIC_COLUMNS[:5]:  # every test-side number of every row is there
        assert "–" not in table[column].tolist(), column
    # the frozen row is the fine-tuned network before its first step: the engine's own epoch 0
    frame = pd.read_csv(out / "reid.csv").set_index("row")
    assert float(frame.loc["frozen", "best_epoch"]) == 0
    assert frame.loc["frozen", "epoch0_oof_map5"] == frame.loc["finetuned", "epoch0_oof_map5"]
    assert abs(frame.loc["frozen", "oof_map5"] - frame.loc["frozen", "epoch0_oof_map5"]) < 1e-6
    runs = out / "runs" / "whales"
    # rows 4-6 reuse the + EMA run's trained fold and really post-process the test set
    ema_model = (runs / "reid-orl-ema-smoke" / "fold0" / "best.pt").read_bytes()
    for row in ("qe_dba", "kreciprocal", "sift"):
        run = runs / f"reid-orl-{row}-smoke"
        assert (run / "fold0" / "best.pt").read_bytes() == ema_model
        assert (run / "postprocess.json").is_file()
        assert json.loads((run / "metrics.json").read_text())["test_map5"] == frame.loc[row, "test_map5"]
    assert "sift fusion" in frame.loc["sift", "postprocess"]
    # a second call reuses every finished run (nothing retrained) and writes the same table
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/fold0/best.pt")}
    assert reid.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/fold0/best.pt")} == stamps
    again = _table((out / "reid.md").read_text(), "orl")
    assert again[METRIC_COLUMNS].equals(table[METRIC_COLUMNS])


def test_reid_options_are_checked():
    options, overrides = reid.parse_options(["rows=sift,frozen", "datasets=orl", "train.epochs=2"])
    assert options["rows"] == ["sift", "frozen"] and overrides == ["train.epochs=2"]
    assert reid.needed_rows(options["rows"]) == ["frozen", "ema", "sift"]  # sift reuses the EMA run's folds
    assert reid.main(["rows=nope"]) == 2
    assert reid.main(["budget=huge"]) == 2
    assert re.fullmatch(r"reid-orl-sift-smoke", reid.run_name("orl", "sift", "smoke"))
