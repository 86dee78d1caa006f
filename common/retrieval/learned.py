"""Re-ranking a kNN shortlist with the learned distance (`loss.distance=learned`, `infer.learned_rerank`).

Why a shortlist: the relation head (`common.models.heads.RelationHead`) scores one pair at a time,
so scoring a query against the whole gallery is an MLP on every pair; faiss's cosine kNN finds the
`infer.neighbours` candidates cheaply and the head re-orders only those, the usual two-stage design
(retrieve, then verify). Its probability P(same identity) is mixed with the shortlist's similarity,
`mix * similarity + (1 - mix) * p` (`mix` tuned on OOF), before identities are voted and the unknown
class inserted, so the new_whale threshold is tuned on the re-ranked score.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["RelationScorer", "learned_rerank"]


class RelationScorer:
    """P(same identity) of (query, gallery image) pairs from the relation heads of the models whose
    embeddings were concatenated (the fold ensemble: fold f's slice is columns f*d .. (f+1)*d); the
    heads' probabilities are averaged, each head seeing its own model's slice (it re-normalises)."""

    def __init__(self, heads: Sequence[nn.Module], chunk_pairs: int = 1 << 16):
        if not heads:
            raise ValueError("RelationScorer needs at least one relation head")
        self.heads = [head.eval() for head in heads]
        self.dims = [int(head.dim) for head in heads]
        self.chunk_pairs = int(chunk_pairs)

    @classmethod
    def from_models(cls, models: Sequence[nn.Module]) -> "RelationScorer | None":
        """The scorer of these models' relation heads; None when any has none (not trained with one)."""
        heads = [getattr(m, "relation", None) for m in models]
        return None if not heads or any(h is None for h in heads) else cls([copy.deepcopy(h).cpu() for h in heads])

    @torch.no_grad()
    def __call__(self, query: np.ndarray, gallery: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``[n, k]`` probabilities of ``query[i]`` with ``gallery[ids[i, j]]``; 0 where ``ids`` is -1."""
        query, gallery, ids = np.asarray(query, np.float32), np.asarray(gallery, np.float32), np.asarray(ids)
        width = sum(self.dims)
        if query.shape[1] != width or gallery.shape[1] != width:
            raise ValueError(f"the relation heads expect {width}-dimensional embeddings ({'+'.join(map(str, self.dims))}), "
                             f"got query {query.shape[1]} and gallery {gallery.shape[1]}")
        n, k = ids.shape
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        out = np.zeros((n, k), np.float64)
        rows = max(1, self.chunk_pairs // max(k, 1))
        start = 0
        for head, dim in zip(self.heads, self.dims):
            q = torch.from_numpy(np.ascontiguousarray(query[:, start:start + dim]))
            g = torch.from_numpy(np.ascontiguousarray(gallery[:, start:start + dim]))
            for r in range(0, n, rows):
                logits = head(q[r:r + rows].unsqueeze(1), g[torch.from_numpy(safe[r:r + rows])])
                out[r:r + rows] += torch.sigmoid(logits).double().numpy()
            start += dim
        return np.where(valid, out / len(self.heads), 0.0).astype(np.float32)


def learned_rerank(sims: np.ndarray, ids: np.ndarray, query: np.ndarray, gallery: np.ndarray,
                   relation: RelationScorer, mix: float) -> tuple[np.ndarray, np.ndarray]:
    """The shortlist ``(sims [n, k], ids [n, k])`` re-scored by ``mix * sims + (1 - mix) * p`` and
    re-sorted best first (``mix=0``: the head alone); slots with id -1 stay last at -inf."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"learned_rerank: mix must be in [0, 1], got {mix!r}")
    ids = np.asarray(ids, np.int64)
    sims = np.asarray(sims, np.float32)
    p = relation(query, gallery, ids)
    score = np.where(ids >= 0, np.float32(mix) * np.where(ids >= 0, sims, 0) + np.float32(1 - mix) * p, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")
    return np.take_along_axis(score, order, axis=1).astype(np.float32), np.take_along_axis(ids, order, axis=1)
