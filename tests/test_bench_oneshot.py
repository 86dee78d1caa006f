"""bench oneshot: Lake et al.'s 20-way one-shot trials on Omniglot small2, scored with a run's embeddings."""
import numpy as np
import pytest

from bench import oneshot
from bench.datasets import OMNIGLOT_MEMBER

pytestmark = pytest.mark.skipif(not oneshot.SMALL2.is_file(), reason="../shared/data/omniglot is absent")


def test_trials_pair_one_drawer_as_gallery_with_another_as_queries():
    trials = oneshot.one_shot_trials(oneshot.SMALL2, runs=8, way=20, seed=3)
    assert len(trials) == 8 and {t["alphabet"] for t in trials} == {"Greek", "Japanese_(katakana)", "Latin", "Sanskrit"}
    for t in trials:  # Tagalog (17 characters) cannot make a 20-way trial
        parts = [OMNIGLOT_MEMBER.search(m).groups() for m in t["gallery"] + t["queries"]]
        gallery, queries = parts[:20], parts[20:]
        assert [g[1] for g in gallery] == [q[1] for q in queries] and len({g[1] for g in gallery}) == 20
        assert len({g[3] for g in gallery}) == 1 and len({q[3] for q in queries}) == 1  # one drawer each side
        assert gallery[0][3] != queries[0][3] and {p[0] for p in parts} == {t["alphabet"]}
    assert trials == oneshot.one_shot_trials(oneshot.SMALL2, runs=8, way=20, seed=3)
    names = {oneshot.file_name(m) for t in trials for m in t["gallery"] + t["queries"]}
    assert len(names) == len({m for t in trials for m in t["gallery"] + t["queries"]})  # one file per drawing


def test_error_rate_counts_queries_nearest_to_another_character():
    trials = oneshot.one_shot_trials(oneshot.SMALL2, runs=2, way=20, seed=0)
    rng = np.random.default_rng(0)
    vectors = {}
    for t in trials:
        for i, (g, q) in enumerate(zip(t["gallery"], t["queries"])):
            centre = rng.normal(size=8) * 10
            vectors[oneshot.file_name(g)] = centre
            vectors[oneshot.file_name(q)] = centre + rng.normal(size=8) * 0.01
    assert oneshot.error_rate(vectors, trials) == 0.0
    first = trials[0]["queries"][0]
    vectors[oneshot.file_name(first)] = vectors[oneshot.file_name(trials[0]["gallery"][1])].copy()
    assert oneshot.error_rate(vectors, trials) == pytest.approx(1 / 40)


def test_bench_trains_on_small1_and_scores_small2(tmp_path):
    assert oneshot.main([f"out={tmp_path}", "runs=2", "preset=smoke", "data.limit=300", "progress=false",
                         "data.num_workers=0", "run.name=t"]) == 0
    table = (tmp_path / "oneshot.md").read_text()
    row = table.strip().splitlines()[-1]
    assert row.startswith("| t | preset=smoke data.limit=300") and "2 x 20" in row and "%" in row
    with np.load(tmp_path / "oneshot" / "t-small2.npz") as z:
        assert len(z["files"]) == 2 * 2 * 20  # every gallery and query drawing embedded, none shared
    error = float(row.split("|")[4].strip().rstrip("%")) / 100
    assert 0.0 < error < 0.95  # a 2-epoch smoke model: far from perfect, better than chance (0.95)
