"""Self-supervised pretraining: pretext tasks, their data, and the `pretrain` command end to end."""
from __future__ import annotations

import json
import types

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch.utils.data import DataLoader, default_collate

from common.core.errors import ConfigError
from common.ssl.pretext import (PRETEXT, PretextDataset, create_pretext, cut_tiles, identity_groups, identity_partners,
                        jigsaw_permutations, min_hamming_distance, reseed_worker_transform)


def ssl_options(**values):
    """The `ssl` config section (every key from defaults.yaml), with some values changed."""
    from common.core.config import load_config
    from competitions.whales import COMPETITION

    return {**load_config(COMPETITION.config_path).ssl, **values}


def tiny_backbone():
    return timm.create_model("test_efficientnet", num_classes=0, global_pool="")


def test_registry_names_the_four_tasks_and_rejects_others():
    assert set(PRETEXT) == {"simclr", "rotation", "jigsaw", "micle"}
    with pytest.raises(ConfigError, match="unknown pretext task 'colorize'.*jigsaw"):
        create_pretext("colorize", tiny_backbone(), (32, 64), ssl_options())


@pytest.mark.parametrize("name", sorted(PRETEXT))
def test_pretext_loss_is_finite_and_decreases_on_a_tiny_batch(name):
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (8, 24, 48, 3), dtype=np.uint8)
    task = create_pretext(name, tiny_backbone(), (24, 48), ssl_options(temperature=0.2, projection_dim=32))
    groups = identity_groups(list("aabbxyzw"), [1, 1, 1, 1, 0, 0, 0, 0])
    dataset = PretextDataset(images, range(8), task.transform(), groups, task.two_views, task.uses_identities)
    batch = default_collate([dataset[i] for i in range(8)])
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        torch.manual_seed(1)  # the same rotations / tile crops / permutations every step
        loss = task.loss(batch)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_jigsaw_permutations_are_deterministic_and_far_apart():
    first = jigsaw_permutations(100)
    jigsaw_permutations.cache_clear()
    again = jigsaw_permutations(100)
    assert np.array_equal(first, again)
    assert first.shape == (100, 9) and len({tuple(p) for p in first}) == 100
    assert all(sorted(p) == list(range(9)) for p in first.tolist())
    assert min_hamming_distance(first) >= 6          # as the docstring states
    assert min_hamming_distance(jigsaw_permutations(64)) >= 7
    random_set = np.array([np.random.default_rng(s).permutation(9) for s in range(100)])
    assert min_hamming_distance(random_set) < min_hamming_distance(first)  # greedy selection matters


def test_jigsaw_tiles_come_from_their_cells_in_row_major_order():
    cells = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    image = cells.repeat_interleave(10, 0).repeat_interleave(20, 1)  # 30 x 60, cell k has value k
    images = image.expand(2, 3, 30, 60).clone()
    tiles = cut_tiles(images, grid=3, fraction=0.8)
    assert tiles.shape == (2, 9, 3, 8, 16)
    for k in range(9):
        assert torch.all(tiles[:, k] == k)


def test_identity_groups_and_partners():
    groups = identity_groups(["a", "b", "a", "new_whale", None, "a"], [True, True, True, False, False, True])
    assert groups[0] == groups[2] == groups[5] and len(set(groups.tolist())) == 4
    partners = identity_partners(groups)
    assert sorted(partners[0].tolist()) == [2, 5] and len(partners[1]) == 0 and len(partners[3]) == 0


def _constant_images(n: int) -> np.ndarray:
    return np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], 4, axis=1).repeat(4, 2).repeat(3, 3)


def test_micle_positives_are_different_images_of_one_identity():
    images = _constant_images(6)  # image i is all i: a view tells which image it came from
    labels = ["a", "a", "a", "b", "new_whale", None]
    groups = identity_groups(labels, [True, True, True, False, False, False])  # b: a single image counts as unknown
    micle = PretextDataset(images, range(6), A.Compose([]), groups, two_views=True, pair_identities=True)
    simclr = PretextDataset(images, range(6), A.Compose([]), None, two_views=True, pair_identities=False)
    torch.manual_seed(0)
    for _ in range(5):
        for i in range(6):
            views, group = micle[i]
            source = views[:, 0, 0, 0].tolist()
            assert source[0] == i
            if i < 3:
                assert source[1] != i and source[1] < 3 and group == groups[i]  # another photo of identity a
            else:
                assert source[1] == i  # no other photo: two views of itself
            assert simclr[i][0][:, 0, 0, 0].tolist() == [i, i]


def test_micle_loss_counts_same_identity_anchors_as_positives():
    torch.manual_seed(0)
    task = create_pretext("micle", tiny_backbone(), (32, 32), ssl_options(temperature=0.2))
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    z1[1], z2[1] = z1[0], z2[0]  # two images of one identity with the same features
    same = torch.tensor([0, 0, 1, 2, 3, 4])
    alone = torch.arange(6)
    assert task.contrast(z1, z2, same) < task.contrast(z1, z2, alone)  # no longer pushed apart as negatives


def test_loader_workers_do_not_repeat_each_others_augmentations():
    images = np.full((4, 8, 8, 3), 128, np.uint8)
    transform = A.Compose([A.RandomBrightnessContrast(0.5, 0.5, p=1.0)])
    dataset = PretextDataset(images, range(4), transform)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=reseed_worker_transform,
                        generator=torch.Generator().manual_seed(0))
    first_epoch = [float(v.float().mean()) for v, _ in loader]
    second_epoch = [float(v.float().mean()) for v, _ in loader]
    assert first_epoch[0] != first_epoch[1]  # items 0 and 1 went to different workers
    assert first_epoch != second_epoch


# ---- the `pretrain` command end to end --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_whales(tmp_path_factory):
    from competitions.whales.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("ssl_whales"), n_identities=10, n_train=40, n_test=10, progress=False)


def test_pretrain_smoke_writes_a_backbone_that_train_init_loads(tiny_whales, tmp_path, capsys):
    from common.models.factory import build_model
    from common.core.cli import main
    from common.core.config import load_config
    from common.ssl.pretrain import pretrain
    from competitions.whales import COMPETITION

    args = ["preset=smoke", "ssl.method=micle", "ssl.epochs=1", "ssl.batch_size=16",
            f"data.root={tiny_whales}", f"run.root={tmp_path}", "run.name=ssl", "progress=false",
            "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = load_config(COMPETITION.config_path, args)
    cfg.ssl["max_images"] = 30
    run = pretrain(COMPETITION, cfg)
    assert run == tmp_path / "whales" / "ssl"
    out = capsys.readouterr().out
    assert "kNN top-1 of the initial backbone" in out and "model.init=" in out
    log = pd.read_csv(run / "log.csv")
    assert log.epoch.tolist() == [1] and 0.0 <= log.knn_top1.iloc[0] <= 1.0 and np.isfinite(log.train_loss.iloc[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ssl_method"] == "micle" and metrics["images"] == 30 and metrics["knn_queries"] > 0
    assert (run / "config.yaml").exists() and (run / "curves.png").exists()

    state = torch.load(run / "backbone.pt", map_location="cpu")
    assert state and all(k.startswith("backbone.") for k in state)
    model = build_model(load_config(COMPETITION.config_path, ["preset=smoke", f"model.init={run / 'backbone.pt'}"]), num_classes=5)
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key[len("backbone."):]], value), key

    assert main(COMPETITION, ["pretrain", *args]) == 2  # the same run.name again needs resume=true
    assert "already exists" in capsys.readouterr().err
    assert main(COMPETITION, ["pretrain", *args, "resume=true"]) == 0  # finished: nothing left to train
    assert pd.read_csv(run / "log.csv").epoch.tolist() == [1]
    assert json.loads((run / "metrics.json").read_text())["images"] == 30  # the saved config was reused
