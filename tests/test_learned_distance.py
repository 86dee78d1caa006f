"""loss.distance=learned: the relation head (a Siamese pair scorer), its binary pair loss, its place in the
model (optimised, saved, loaded), the shortlist re-ranking it drives (infer.learned_rerank), and the config check."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from timm.optim import create_optimizer_v2
from torch import nn

import competitions.whales as whales
from common.core.cli import main
from common.core.config import Config, load_config
from common.core.errors import ConfigError
from common.core.validate import validate_config
from common.engine.trainer import param_groups
from common.losses.objective import Objective, build_objective
from common.losses.pair import ContrastiveLoss, TripletLoss
from common.models.factory import build_model
from common.models.heads import RelationHead
from common.retrieval import postprocess
from common.retrieval.index import l2_normalize
from common.retrieval.learned import RelationScorer, learned_rerank
from common.tasks import TASKS

LEARNED = ["preset=smoke", "loss.distance=learned", "model.loss=contrastive"]


def whales_cfg(*overrides):
    return load_config(whales.COMPETITION.config_path, list(overrides))


def test_relation_head_scores_all_pairs_symmetrically_and_a_shortlist_alike():
    torch.manual_seed(0)
    head = RelationHead(8, hidden=16)
    x = torch.randn(5, 8)
    logits = head.pairwise(x)
    assert logits.shape == (5, 5) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, logits.T)  # |a-b| and a*b are symmetric
    torch.testing.assert_close(head.pairwise(3 * x), logits)  # on the normalised embeddings: the scale is ignored
    ids = torch.tensor([[1, 4, 0], [2, 2, 3]])
    shortlist = head(x[:2].unsqueeze(1), x[ids])  # (query, its shortlist) pairs
    assert shortlist.shape == (2, 3)
    torch.testing.assert_close(shortlist, torch.stack([logits[0, ids[0]], logits[1, ids[1]]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.pairwise(x.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="dim 8"):
        head(torch.randn(2, 7), torch.randn(2, 7))


class Toy(nn.Module):
    """A linear embedding and a relation head, with EmbeddingModel's output contract."""

    def __init__(self, d_in: int, dim: int):
        super().__init__()
        self.neck, self.relation = nn.Linear(d_in, dim), RelationHead(dim, hidden=32)

    def forward(self, x, labels=None):
        embedding = self.neck(x)
        return {"embedding": embedding, "relation_logits": self.relation.pairwise(embedding)}


def test_the_binary_pair_loss_learns_a_separable_toy_set():
    torch.manual_seed(0)
    centres = torch.randn(4, 6) * 3
    labels = torch.arange(4).repeat_interleave(6)
    x = centres[labels] + 0.3 * torch.randn(len(labels), 6)
    model, objective = Toy(6, 8), Objective(False, ContrastiveLoss("learned"), 1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        loss, parts = objective(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    with torch.no_grad():
        p = torch.sigmoid(model(x)["relation_logits"])
    same = labels[:, None] == labels[None]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool)
    assert p[same & off_diagonal].min() > p[~same].max()  # every same pair above every different one


def test_binary_pair_loss_is_balanced_bce_and_triplet_ranks_by_the_learned_distance():
    labels = torch.tensor([0, 0, 1, 1, 1])
    logits = torch.randn(5, 5)
    logits = (logits + logits.T) / 2
    same = (labels[:, None] == labels[None]) & ~torch.eye(5, dtype=torch.bool)
    bce = nn.functional.binary_cross_entropy_with_logits
    expected = bce(logits[same], torch.ones(int(same.sum()))) + bce(logits[labels[:, None] != labels[None]],
                                                                      torch.zeros(12))
    emb = torch.randn(5, 4)
    torch.testing.assert_close(ContrastiveLoss("learned")(emb, labels, relation_logits=logits), expected)
    triplet = TripletLoss.from_params({"distance": "learned", "margin": 0.2, "miner": "all"})
    dist = 1 - torch.sigmoid(logits)
    value = triplet(emb, labels, relation_logits=logits.requires_grad_())
    a, p, n = torch.where(same.unsqueeze(2) & (labels[:, None] != labels[None]).unsqueeze(1))
    hinge = torch.relu(dist[a, p] - dist[a, n] + 0.2)
    torch.testing.assert_close(value, hinge[hinge > 0].mean())
    value.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="relation_logits"):
        ContrastiveLoss("learned")(emb, labels)


def test_the_relation_head_is_in_the_model_the_optimizer_and_the_checkpoint(tmp_path):
    cfg = whales_cfg(*LEARNED)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5)
    assert isinstance(model.relation, RelationHead) and model.relation.dim == cfg.model.embedding_dim
    groups = param_groups(model, 1e-3, 1.0, 10.0, 1e-4)
    optimizer = create_optimizer_v2(groups, opt="adamw", lr=1e-3, weight_decay=1e-4)
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in optimised for p in model.relation.parameters())
    # one trainer-style step moves the head's weights
    before = [p.detach().clone() for p in model.relation.parameters()]
    images, labels = torch.randn(8, 3, 48, 96), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    model.train()
    loss, parts = build_objective(cfg)(model(images, labels), labels)
    assert set(parts) == {"ce", "pair"}
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.relation.parameters()))
    # saved and loaded with the model (strict load: a model without a head would refuse the keys)
    torch.save({"model": model.state_dict()}, tmp_path / "best.pt")
    assert any(k.startswith("relation.") for k in model.state_dict())
    again = build_model(cfg, num_classes=5)
    again.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=True)["model"])
    for a, b in zip(model.relation.parameters(), again.relation.parameters()):
        assert torch.equal(a, b)
    assert build_model(whales_cfg("preset=smoke"), num_classes=5).relation is None  # cosine: no head


def hand_set_head(dim: int = 3) -> RelationHead:
    """logit = -10 |a_1 - b_1|: only the second coordinate matters (ReLU kept linear by a large bias)."""
    head = RelationHead(dim, hidden=1)
    with torch.no_grad():
        head.mlp[0].weight.zero_()
        head.mlp[0].weight[0, 1] = -10.0
        head.mlp[0].bias.fill_(100.0)
        head.mlp[2].weight.fill_(1.0)
        head.mlp[2].bias.fill_(-100.0)
    return head


def test_learned_rerank_reorders_a_shortlist_as_the_head_says():
    query = l2_normalize(np.array([[1.0, 0.0, 0.0]]))
    gallery = l2_normalize(np.array([[0.9, 0.436, 0.0],    # cosine 0.9, but differs in coordinate 1
                                     [0.8, 0.0, 0.6],      # cosine 0.8, agrees in coordinate 1
                                     [-1.0, 0.0, 0.0]]))   # cosine -1
    scorer = RelationScorer([hand_set_head()])
    sims, ids = postprocess.shortlist(query, gallery, 3)
    assert ids[0].tolist() == [0, 1, 2]  # cosine order
    p = scorer(query, gallery, ids)
    assert p[0, 1] > p[0, 0]  # the head prefers gallery 1
    sims_h, ids_h = postprocess.shortlist(query, gallery, 3, [("learned_rerank", {"mix": 0.0})], scorer)
    assert ids_h[0, 0] == 1 and np.all(np.diff(sims_h[0]) <= 0)
    np.testing.assert_allclose(sims_h[0, 0], p[0, 1], rtol=1e-5)
    same, _ = learned_rerank(sims, ids, query, gallery, scorer, mix=1.0)  # mix 1: the similarity alone
    np.testing.assert_allclose(same, sims, rtol=1e-6)
    # missing neighbours (id -1) stay last at -inf
    padded = learned_rerank(np.array([[0.9, -np.inf]], np.float32), np.array([[0, -1]]), query, gallery, scorer, 0.5)
    assert padded[1].tolist() == [[0, -1]] and padded[0][0, 1] == -np.inf
    # an ensemble of two folds (concatenated, scaled) scores the mean of its heads
    two = RelationScorer([hand_set_head(), hand_set_head()])
    joint = lambda v: np.concatenate([v, v], axis=1) / np.sqrt(2)  # noqa: E731
    np.testing.assert_allclose(two(joint(query), joint(gallery), ids), p, rtol=1e-5)
    with pytest.raises(ValueError, match="relation heads"):
        postprocess.shortlist(query, gallery, 3, [("learned_rerank", {"mix": 0.0})])


def test_tuning_chooses_learned_rerank_when_it_helps_and_skips_it_without_heads():
    query = l2_normalize(np.array([[1.0, 0.0, 0.0]]))
    gallery = l2_normalize(np.array([[0.9, 0.436, 0.0], [0.8, 0.0, 0.6]]))
    fold = postprocess.FoldAnswers(query, gallery, np.array(["a", "b"], dtype=object), ["b"],
                                   relation=RelationScorer([hand_set_head()]))
    infer = Config({"learned_rerank": True, "tune_grid": {"learned_rerank": {"mix": [0.0, 1.0]}}})
    steps, tried = postprocess.tune_steps([fold], infer, "new_whale", 2, 3, log=lambda _: None)
    assert steps == [("learned_rerank", {"mix": 0.0})] and tried[1]["oof_map5"] > tried[0]["oof_map5"]
    logged = []
    fold.relation = None
    steps, tried = postprocess.tune_steps([fold], infer, "new_whale", 2, 3, log=logged.append)
    assert steps == [] and len(tried) == 1 and any("skipped" in line for line in logged)


def test_the_learned_distance_without_a_pair_loss_is_a_config_error(whale_demo, tmp_path):
    task = TASKS.get(whales.COMPETITION.task)
    with pytest.raises(ConfigError, match=r"loss\.distance=learned.*model\.loss"):
        validate_config(whales_cfg("loss.distance=learned"), task)  # model.loss=none
    with pytest.raises(ConfigError, match="model.loss=ntxent"):
        validate_config(whales_cfg("loss.distance=learned", "model.loss=ntxent"), task)
    with pytest.raises(ConfigError, match="infer.learned_rerank"):
        validate_config(whales_cfg("infer.learned_rerank=true"), task)
    validate_config(whales_cfg(*LEARNED, "infer.learned_rerank=true"), task)
    validate_config(whales_cfg("loss.distance=learned", "model.loss=triplet"), task)
    # through the CLI: refused before a run folder exists
    assert main(whales.COMPETITION, ["train", "preset=smoke", "loss.distance=learned", f"data.root={whale_demo}",
                                     f"run.root={tmp_path}", "run.name=bad"]) == 2
    assert not (tmp_path / "whales" / "bad").exists()


def test_smoke_run_with_the_learned_distance_trains_reranks_and_predicts(whale_demo, tmp_path):
    args = [f"data.root={whale_demo}", f"run.root={tmp_path}", "progress=false", "data.num_workers=0",
            f"data.cache_dir={tmp_path / 'cache'}", "threads=1"]
    # no epoch-0 candidate: best.pt then holds a trained relation head, not the initial one
    trained = [*LEARNED, *args, "infer.learned_rerank=true", "train.eval_initial=false"]
    assert main(whales.COMPETITION, ["train", *trained, "run.name=learned"]) == 0
    run = tmp_path / "whales" / "learned"
    state = torch.load(run / "fold0" / "best.pt", weights_only=True)["model"]
    assert "relation.mlp.0.weight" in state
    log = pd.read_csv(run / "log.csv")
    assert np.isfinite(log.train_pair.dropna()).all() and len(log.train_pair.dropna()) == 2
    chosen = json.loads((run / "postprocess.json").read_text())
    assert any("learned_rerank" in row["postprocess"] for row in chosen["tried"])
    assert (run / "submission.csv").exists()
    out = tmp_path / "again.csv"
    assert main(whales.COMPETITION, ["predict", *args, "run.name=learned", f"out={out}"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(run / "submission.csv"))
    # an ensemble of runs joins their embeddings, which no one run's head can score: re-ranking is skipped there
    assert main(whales.COMPETITION, ["train", *trained, "run.name=other", "model.embedding_dim=32"]) == 0
    assert main(whales.COMPETITION, ["predict", *args, "run.name=learned,other"]) == 0
    joint = json.loads((tmp_path / "whales" / "learned+other" / "postprocess.json").read_text())
    assert joint["steps"] == [] and len(joint["tried"]) == 1
