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
from common.ssl.pretext import (CONTEXT_NEIGHBOURS, PRETEXT, PretextDataset, check_backbone_inputs, create_pretext,
                                cut_tiles, identity_groups, identity_partners, inpainting_mask, jigsaw_permutations,
                                masked_reconstruction_loss, min_hamming_distance, reseed_worker_transform, standardize)


def ssl_options(**values):
    """The `ssl` config section (every key from defaults.yaml), with some values changed."""
    from common.core.config import load_config
    from competitions.whales import COMPETITION

    return {**load_config(COMPETITION.config_path).ssl, **values}


def tiny_backbone():
    return timm.create_model("test_efficientnet", num_classes=0, global_pool="")


def test_registry_names_the_eight_tasks_and_rejects_others():
    assert set(PRETEXT) == {"simclr", "rotation", "jigsaw", "micle", "context", "exemplar", "inpainting",
                            "damaged_jigsaw"}
    with pytest.raises(ConfigError, match="unknown pretext task 'colorize'.*jigsaw"):
        create_pretext("colorize", tiny_backbone(), (32, 64), ssl_options())


@pytest.mark.parametrize("name", sorted(PRETEXT))
def test_pretext_loss_is_finite_and_decreases_on_a_tiny_batch(name):
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (8, 24, 48, 3), dtype=np.uint8)
    task = create_pretext(name, tiny_backbone(), (24, 48), ssl_options(temperature=0.2, projection_dim=32))
    groups = identity_groups(list("aabbxyzw"), [1, 1, 1, 1, 0, 0, 0, 0])
    dataset = PretextDataset(images, range(8), task.transform(), groups, pair_identities=task.uses_identities,
                             views=task.views)
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


@pytest.mark.parametrize("name", sorted(PRETEXT))
def test_a_head_that_knows_nothing_scores_the_chance_loss(name):
    """With its last layer zeroed, every task's head is uniform over its classes (or predicts the
    mean image): its loss must then be exactly `chance_loss`, the line pretraining must fall below."""
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (8, 24, 48, 3), dtype=np.uint8)
    task = create_pretext(name, tiny_backbone(), (24, 48), ssl_options(projection_dim=32))
    heads = [getattr(task, a) for a in ("projector", "classifier", "missing_classifier", "decoder") if hasattr(task, a)]
    assert heads
    for head in heads:
        last = head[-1] if isinstance(head, torch.nn.Sequential) else head
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    dataset = PretextDataset(images, range(8), task.transform(), identity_groups(list("abcdefgh"), [0] * 8),
                             views=task.views)
    batch = default_collate([dataset[i] for i in range(8)])
    task.eval()
    torch.manual_seed(3)
    chance = task.chance_loss(batch[0])
    torch.manual_seed(3)  # inpainting: the same mask
    with torch.no_grad():
        loss = task.loss(batch).item()
    assert loss == pytest.approx(chance, rel=1e-4), (loss, chance)
    assert chance > 0


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


def test_context_patches_come_from_the_centre_and_the_stated_neighbour():
    torch.manual_seed(0)
    cells = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    image = cells.repeat_interleave(20, 0).repeat_interleave(30, 1)  # 60 x 90, cell (r, c) has value 3r + c
    images = image.expand(64, 3, 60, 90).clone()
    task = create_pretext("context", tiny_backbone(), (60, 90), ssl_options(context_patch=0.7))
    centre, neighbour, target = task.pairs(images)
    assert centre.shape == neighbour.shape == (64, 3, 14, 21) and set(target.tolist()) == set(range(8))
    assert torch.all(centre == 4)
    for patch, k in zip(neighbour, target.tolist()):
        r, c = CONTEXT_NEIGHBOURS[k]
        assert torch.all(patch == 3 * r + c), k
    # coordinates: every patch lies inside its cell with a margin (the gap), and its place is jittered
    rows = torch.arange(60.0)[:, None].expand(60, 90)
    cols = torch.arange(90.0)[None, :].expand(60, 90)
    coords = torch.stack([rows, cols, rows]).expand(64, 3, 60, 90).clone()
    centre, neighbour, target = task.pairs(coords)
    tops = set()
    placed = [(p, (1, 1)) for p in centre] + [(p, CONTEXT_NEIGHBOURS[k]) for p, k in zip(neighbour, target.tolist())]
    for patch, (r, c) in placed:
        top, left = int(patch[0].min()), int(patch[1].min())
        assert r * 20 + 2 <= top and top + 14 <= (r + 1) * 20 - 2  # >= 2 px to the cell's edges: >= 4 between patches
        assert c * 30 + 2 <= left and left + 21 <= (c + 1) * 30 - 2
        tops.add(top - r * 20)
    assert len(tops) > 1


def test_context_patches_lose_their_colour_and_are_standardised():
    from common.ssl.pretext import drop_colour

    torch.manual_seed(0)
    patches = torch.rand(200, 3, 8, 8) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    dropped = drop_colour(patches)
    gray = (dropped[:, 0] == dropped[:, 1]).all(dim=(1, 2)) & (dropped[:, 1] == dropped[:, 2]).all(dim=(1, 2))
    spread = dropped.std(dim=(2, 3))  # (N, 3): one channel keeps its spread, the others are faint noise
    one_channel = (spread.max(1).values > 20 * spread.min(1).values) & ((spread > 0.05).sum(1) == 1)
    assert torch.all(gray | one_channel) and 40 < int(gray.sum()) < 160
    normal = standardize(dropped)
    assert torch.allclose(normal.mean(dim=(1, 2, 3)), torch.zeros(200), atol=1e-5)


def test_exemplar_copies_of_one_seed_share_a_class_and_seeds_differ():
    images = _constant_images(5)
    dataset = PretextDataset(images, range(5), A.Compose([]), views=3)
    batch, _ = default_collate([dataset[i] for i in range(5)])
    assert batch.shape == (5, 3, 3, 4, 4)
    task = create_pretext("exemplar", tiny_backbone(), (32, 32), ssl_options(exemplar_views=3, temperature=0.1))
    copies, target = task.targets(batch)
    assert target.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    for copy, seed in zip(copies, target.tolist()):
        assert torch.all(copy == seed)  # the copy really is of the seed its class names
    # the classifier: copies that cluster by seed are classified to it, scattered ones are not
    torch.manual_seed(0)
    clustered = torch.eye(5).repeat_interleave(3, 0) + 0.05 * torch.randn(15, 5)
    logits = task.classify(clustered, 5)
    assert logits.shape == (15, 5) and torch.equal(logits.argmax(1), target)
    loss = torch.nn.functional.cross_entropy(logits, target)
    assert loss < torch.nn.functional.cross_entropy(task.classify(torch.randn(15, 5), 5), target)
    # leave-one-out: a copy is not compared with itself (else one copy per seed would be trivially right)
    pairs = torch.randn(10, 6)  # 5 seeds x 2 copies: a copy's own class is its seed's *other* copy
    unit = torch.nn.functional.normalize(pairs, dim=1)
    logits = task.classify(pairs, 5)
    own = logits[torch.arange(10), torch.arange(5).repeat_interleave(2)]
    assert torch.allclose(own, (unit * unit.reshape(5, 2, 6).flip(1).reshape(10, 6)).sum(1) / 0.1, atol=1e-5)


def test_exemplar_copies_are_strongly_transformed():
    task = create_pretext("exemplar", tiny_backbone(), (48, 96), ssl_options())
    image = np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8)
    dataset = PretextDataset(image[None], [0], task.transform(), views=task.views)
    copies, _ = dataset[0]
    assert copies.shape == (4, 3, 48, 96)
    for a in range(4):
        for b in range(a + 1, 4):
            assert (copies[a] - copies[b]).abs().mean() > 0.1
    names = [type(t).__name__ for t in task.transform().transforms]
    assert "Affine" in names and "ColorJitter" in names and "HorizontalFlip" not in names


@pytest.mark.parametrize("size, blurred, smallest", [((40, 40), False, (28 / 40) ** 2), ((32, 64), False, (28 / 32) ** 2),
                                                    ((128, 128), True, 0.2), ((20, 20), False, 1.0)])
def test_simclr_views_are_sized_for_the_image(size, blurred, smallest):
    """Small images get no blur and no crop under 28 px a side; 64 px and up, SimCLR's own recipe."""
    transforms = create_pretext("simclr", tiny_backbone(), size, ssl_options()).transform().transforms
    names = [type(t).__name__ for t in transforms]
    assert ("GaussianBlur" in names) == blurred
    crop = next(t for t in transforms if type(t).__name__ == "RandomResizedCrop")
    assert crop.scale == pytest.approx((smallest, 1.0))
    assert tuple(crop.size) == size


def test_inpainting_mask_hides_the_stated_region_and_the_loss_weights_it():
    center = inpainting_mask((48, 96), 0.25, "center", batch=2)
    assert center.shape == (2, 1, 48, 96)
    expected = torch.zeros(48, 96, dtype=torch.bool)
    expected[12:36, 24:72] = True  # the central half of each side: a quarter of the area
    assert torch.equal(center[0, 0], expected) and torch.equal(center[1, 0], expected)
    torch.manual_seed(0)
    blocks = inpainting_mask((48, 96), 0.25, "blocks", batch=8)
    shares = blocks.float().mean(dim=(1, 2, 3))
    assert torch.all(shares > 0.05) and torch.all(shares <= 0.25 + 1e-6) and not torch.equal(blocks[0], blocks[1])

    options = ssl_options(inpaint_area=0.25, inpaint_mask="center")
    task = create_pretext("inpainting", tiny_backbone(), (48, 96), options)
    images = torch.randn(2, 3, 48, 96)
    masked, mask = task.mask(images)
    assert torch.equal(mask, center)
    assert torch.all(masked[:, :, 12:36, 24:72] == 0)
    assert torch.equal(masked.masked_fill(mask, 0), images.masked_fill(mask, 0))  # untouched outside
    assert task.reconstruct(masked).shape == images.shape
    weight = float(options["inpaint_outside_weight"])
    inside_error = images + 0.5 * mask
    loss, masked_mse = masked_reconstruction_loss(inside_error, images, mask, weight)
    assert loss.item() == pytest.approx(0.25) and masked_mse.item() == pytest.approx(0.25)
    outside_error = images + 0.5 * ~mask
    loss, masked_mse = masked_reconstruction_loss(outside_error, images, mask, weight)
    assert loss.item() == pytest.approx(weight * 0.25) and masked_mse.item() == 0
    with pytest.raises(ConfigError, match="ssl.inpaint_mask"):
        create_pretext("inpainting", tiny_backbone(), (48, 96), ssl_options(inpaint_mask="ring"))


def test_damaged_jigsaw_removes_one_grey_tile_and_asks_which():
    torch.manual_seed(0)
    cells = torch.arange(1, 10, dtype=torch.float32).reshape(3, 3)
    plane = cells.repeat_interleave(10, 0).repeat_interleave(20, 1)  # 30 x 60, cell k has value k + 1
    images = torch.stack([plane, 2 * plane, 3 * plane]).expand(16, 3, 30, 60).clone()  # coloured
    task = create_pretext("damaged_jigsaw", tiny_backbone(), (30, 60), ssl_options(jigsaw_permutations=10))
    tiles, target, missing = task.damage(images)
    assert tiles.shape == (16, 9, 3, 8, 17)
    assert torch.all(tiles[:, :, 0] == tiles[:, :, 1]) and torch.all(tiles[:, :, 1] == tiles[:, :, 2])  # grey
    order = task.permutations[target]
    for b in range(16):
        zero = [j for j in range(9) if torch.all(tiles[b, j] == 0)]
        assert len(zero) == 1  # exactly one tile removed
        assert order[b, zero[0]] == missing[b]  # ... and the second head's target is the cell it came from
        for j in range(9):
            if j != zero[0]:
                assert torch.all(tiles[b, j] == 2 * (order[b, j] + 1))  # the grey of cell order[j]
    assert len(set(missing.tolist())) > 1

    task.eval()  # the loss is the two cross-entropies on exactly these targets
    images = torch.randn(4, 3, 30, 60)
    torch.manual_seed(1)
    out = task(images)
    torch.manual_seed(1)
    tiles, target, missing = task.damage(images)
    features = task.tile_features(standardize(tiles))
    expected = (torch.nn.functional.cross_entropy(task.classifier(features), target)
                + torch.nn.functional.cross_entropy(task.missing_classifier(features), missing))
    assert torch.allclose(out["loss"], expected) and "missing_accuracy" in out
    plain = create_pretext("damaged_jigsaw", tiny_backbone(), (30, 60),
                           ssl_options(jigsaw_permutations=10, damaged_missing_head=False))
    assert "missing_accuracy" not in plain(images) and not hasattr(plain, "missing_classifier")


def test_small_tiles_are_upsampled_or_refused_with_the_key_to_change():
    from common.models.network import create_backbone

    small_cnn = create_backbone("small_cnn")
    for name in PRETEXT:  # the whales smoke size with the default ssl.min_side: every task fits
        check_backbone_inputs(name, small_cnn, (48, 96), ssl_options(), "small_cnn")
    with pytest.raises(ConfigError, match=r"ssl.method=jigsaw: small_cnn cannot embed the 13x27 tiles of 48x96 "
                                          r"images.*ssl.image_size=\[\d+,\d+\] or ssl.min_side=32"):
        check_backbone_inputs("jigsaw", small_cnn, (48, 96), ssl_options(min_side=0), "small_cnn")
    for name, what in (("rotation", "16x16 square crops"), ("inpainting", "16x32 images")):
        with pytest.raises(ConfigError, match=rf"ssl.method={name}: small_cnn.*{what}.*ssl.image_size=\[\d+,\d+\]$"):
            check_backbone_inputs(name, small_cnn, (16, 32), ssl_options(), "small_cnn")


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
    assert metrics["chance_loss"] == pytest.approx(np.log(2 * 16 - 1), abs=1e-3)  # NT-Xent over 2B - 1 others
    assert metrics["final_loss"] == pytest.approx(log.train_loss.iloc[-1]) and "at chance" in out
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


@pytest.mark.parametrize("method", sorted(PRETEXT))
def test_pretrain_smoke_preset_runs_every_method(method, tiny_whales, tmp_path, capsys):
    from common.core.cli import main
    from competitions.whales import COMPETITION

    args = ["pretrain", "preset=smoke", f"ssl.method={method}", f"data.root={tiny_whales}", f"run.root={tmp_path}",
            "run.name=ssl", "progress=false", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(COMPETITION, args) == 0, capsys.readouterr().err
    run = tmp_path / "whales" / "ssl"
    log = pd.read_csv(run / "log.csv")
    assert log.epoch.tolist() == [1] and np.isfinite(log.train_loss.iloc[0])
    assert (run / "backbone.pt").exists() and "model.init=" in capsys.readouterr().out


def test_pretrain_refuses_tiles_too_small_for_the_backbone_before_any_folder(tiny_whales, tmp_path, capsys):
    from common.core.cli import main
    from competitions.whales import COMPETITION

    args = ["pretrain", "preset=smoke", "ssl.method=jigsaw", "ssl.min_side=0", f"data.root={tiny_whales}",
            f"run.root={tmp_path}", "run.name=ssl", "progress=false", "data.num_workers=0"]
    assert main(COMPETITION, args) == 2
    err = capsys.readouterr().err
    assert "ssl.image_size=[" in err and "Traceback" not in err
    assert not (tmp_path / "whales" / "ssl").exists()


def test_extra_images_join_the_pretext_pool_but_not_the_knn_check(tiny_whales, tmp_path, capsys):
    """ssl.extra_images: a folder of unlabelled images (searched recursively) and a single file both
    join the pool; the kNN check still counts only the labelled train images; a missing folder is an
    error naming the key before any run folder exists."""
    import shutil

    from common.core.cli import main
    from competitions.whales import COMPETITION

    extra = tmp_path / "unlabelled" / "deep"
    extra.mkdir(parents=True)
    photos = sorted((tiny_whales / "test").glob("*.jpg"))
    for i, photo in enumerate(photos[:6]):
        shutil.copy(photo, extra / f"u{i}.jpg")
    single = tmp_path / "one.jpg"
    shutil.copy(photos[0], single)
    base = ["pretrain", "preset=smoke", "ssl.method=rotation", f"data.root={tiny_whales}", f"run.root={tmp_path}",
            "progress=false", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(COMPETITION, [*base, "run.name=plain"]) == 0, capsys.readouterr().err
    plain = json.loads((tmp_path / "whales" / "plain" / "metrics.json").read_text())
    capsys.readouterr()
    assert main(COMPETITION, [*base, "run.name=more", f"ssl.extra_images=[{tmp_path / 'unlabelled'},{single}]"]) == 0
    out = capsys.readouterr().out
    more = json.loads((tmp_path / "whales" / "more" / "metrics.json").read_text())
    assert more["images"] == plain["images"] + 7 and "+ 7 extra images" in out
    assert more["knn_images"] == plain["knn_images"] and more["knn_queries"] == plain["knn_queries"]

    assert main(COMPETITION, [*base, "run.name=bad", f"ssl.extra_images=[{tmp_path / 'nowhere'}]"]) == 2
    err = capsys.readouterr().err
    assert "ssl.extra_images" in err and "nowhere" in err and "Traceback" not in err
    assert not (tmp_path / "whales" / "bad").exists()


def test_pretrain_refuses_a_bad_data_root_before_any_folder(tmp_path, capsys):
    from common.core.cli import main
    from competitions.whales import COMPETITION

    empty = tmp_path / "empty"
    empty.mkdir()
    for root, message in [(tmp_path / "nowhere", "is not a folder"), (empty, "train.csv")]:
        args = ["pretrain", "preset=smoke", "ssl.method=rotation", f"data.root={root}", f"run.root={tmp_path / 'runs'}",
                "run.name=ssl", "progress=false"]
        assert main(COMPETITION, args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "runs" / "whales" / "ssl").exists()
