"""Embedding extraction: batched, no grad, optional horizontal-flip TTA averaged in embedding space."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from common.engine import distributed
from common.engine.precision import autocast


@torch.no_grad()
def extract_embeddings(model, dataset: Dataset, *, batch_size: int = 64, device: str | torch.device = "cpu",
                       tta_flip: bool = False, num_workers: int = 0, desc: str = "embed",
                       progress: bool = True, amp: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings of every item, in dataset order.

    With several processes each embeds a strided shard and the rows are gathered back in order.
    `amp` follows `train.amp`: embedding runs in the precision the model was trained in.
    """
    model = distributed.unwrap(model).eval()
    n = len(dataset)
    if distributed.world_size() > 1:
        dataset = Subset(dataset, distributed.shard(n).tolist())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available())
    chunks = []
    for images, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        with autocast(device, amp):  # the precision training used (common.engine.precision)
            emb = F.normalize(model.embed(images).float(), dim=1)
            if tta_flip:
                emb = F.normalize(emb + F.normalize(model.embed(images.flip(-1)).float(), dim=1), dim=1)
        chunks.append(emb.cpu().numpy())
    part = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)
    return distributed.gather_rows(part, n)
