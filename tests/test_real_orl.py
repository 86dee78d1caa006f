"""Real data: the AT&T/ORL faces as a whale-style open-set task must beat the trivial baseline."""
import json

from bench.datasets import write_orl_whale_format
from common.core.cli import main
import competitions.whales as whales


def test_orl_smoke_training_beats_trivial_baseline_clearly(shared_data, tmp_path):
    root = write_orl_whale_format(shared_data / "orl_faces", tmp_path / "orl", held_out_subjects=10,
                                  train_per_subject=5, new_whale_train=2, seed=0)
    code = main(whales.COMPETITION, ["train", "preset=smoke", f"data.root={root}", f"run.root={tmp_path / 'runs'}",
                         "run.name=orl", "progress=false", "data.image_size=[56,48]", "augment.train=light",
                         f"data.cache_dir={tmp_path / 'cache'}"])
    assert code == 0
    metrics = json.loads((tmp_path / "runs" / "whales" / "orl" / "metrics.json").read_text())
    print({k: metrics[k] for k in ("oof_map5", "oof_baseline_map5", "test_map5", "test_baseline_map5")})
    # test set: 30 known people x 5 photos + 10 never-seen people x 8 photos (answer new_whale)
    assert metrics["test_map5"] > metrics["test_baseline_map5"] + 0.15
