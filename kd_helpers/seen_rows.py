"""Train only the word-embedding rows that the training rows use: the same update, less work per step.

A token that never occurs in the training rows gets a zero gradient at every step, and AdamW then moves its row
only by weight decay (zero moments give a zero Adam step). PyTorch still builds the dense gradient of the whole
30,522-row table at every step and runs the optimizer over all of it: for the compact student that table is three
quarters of the weights. :func:`seen_rows_only` swaps the table for one holding just the used rows (plus the
padding row) while training, applies the skipped weight decay to the other rows in one go, and puts the table back
on exit. What is learnt is the same as training the full table (``test_seen_rows_only_is_the_full_update``);
the measured speed-up is in benchmarks/README.md.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from kd_helpers.errors import KDError


class SeenRowsEmbedding(nn.Module):
    """Stands in for an ``nn.Embedding`` during training: trainable ``rows`` for ``token_ids``, the rest frozen."""

    def __init__(self, table: nn.Embedding, token_ids: torch.Tensor):
        super().__init__()
        ids = token_ids.unique()
        if table.padding_idx is not None:  # always present in padded batches; gets no gradient, only weight decay
            ids = torch.cat([ids, torch.tensor([table.padding_idx])]).unique()
        ids = ids.to(table.weight.device)
        self._table = (table,)  # in a tuple, so that its weight is not registered as one of ours
        self.rows = nn.Parameter(table.weight.detach()[ids].clone())
        local = torch.full((table.num_embeddings,), -1, dtype=torch.long, device=ids.device)
        local[ids] = torch.arange(len(ids), device=ids.device)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("local", local, persistent=False)
        self.padding_idx = None if table.padding_idx is None else int(local[table.padding_idx])
        self.pending_decay = 1.0  # weight decay owed to the rows outside ``rows`` (see follow())

    def extra_repr(self) -> str:
        return f"{len(self.ids)} of {self.full.shape[0]} rows trainable, dim {self.full.shape[1]}"

    @property
    def full(self) -> torch.Tensor:
        """The original table's weight: frozen while this module stands in for it."""
        return self._table[0].weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = self.local[input_ids]
        if self.training:
            if (local < 0).any():
                token = int(input_ids[local < 0][0])
                raise KDError(f"token id {token} is not among the training rows' tokens (seen_rows_only)")
            return F.embedding(local, self.rows, self.padding_idx)
        seen = (local >= 0).unsqueeze(-1)  # evaluation may use any token: trained rows, else the frozen table
        return torch.where(seen, F.embedding(local.clamp(min=0), self.rows), F.embedding(input_ids, self.full))

    def follow(self, optimizer: torch.optim.Optimizer) -> None:
        """Count the decoupled weight decay ``optimizer`` (AdamW) gives the rows it does not see, step by step."""
        if not isinstance(optimizer, torch.optim.AdamW):
            raise KDError(f"seen_rows_only needs AdamW (decoupled weight decay), got {type(optimizer).__name__}")
        group = next(g for g in optimizer.param_groups if any(p is self.rows for p in g["params"]))

        def hook(*_):
            self.pending_decay *= 1.0 - float(group["lr"]) * group["weight_decay"]

        optimizer.register_step_post_hook(hook)

    def train(self, mode: bool = True):
        if not mode:
            self.sync()  # evaluation reads the frozen rows: give them the weight decay they are owed
        return super().train(mode)

    @torch.no_grad()
    def sync(self) -> None:
        """Write the trained rows and the owed weight decay into the full table."""
        if self.pending_decay != 1.0:
            self.full.mul_(self.pending_decay)
            self.pending_decay = 1.0
        self.full[self.ids] = self.rows


def used_token_ids(loader) -> torch.Tensor | None:
    """Every token id in ``loader``'s dataset (a tokenised ``datasets.Dataset``), or None if it has no ids."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None or "input_ids" not in getattr(dataset, "column_names", ()):
        return None
    used = {t for ids in dataset["input_ids"] for t in (ids.tolist() if torch.is_tensor(ids) else ids)}
    return torch.tensor(sorted(used), dtype=torch.long)


@contextmanager
def seen_rows_only(model: nn.Module, loader):
    """While inside, ``model``'s word-embedding table trains only the rows ``loader``'s tokens use.

    Yields the :class:`SeenRowsEmbedding` (call its ``follow(optimizer)`` once the optimizer exists), or None
    when nothing can be swapped (no token ids in ``loader``'s dataset, an embedding with options we do not
    mirror, a frozen table): then training is the ordinary one. The table is put back even on Ctrl-C.
    """
    try:
        table = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a transformers model, or one without a word table
        table = None
    token_ids = used_token_ids(loader)
    if (not isinstance(table, nn.Embedding) or token_ids is None or not table.weight.requires_grad
            or table.max_norm is not None or table.scale_grad_by_freq or table.sparse):
        yield None
        return
    swapped = SeenRowsEmbedding(table, token_ids)
    table.weight.requires_grad_(False)
    model.set_input_embeddings(swapped)
    try:
        yield swapped
    finally:
        swapped.sync()
        table.weight.requires_grad_(True)
        model.set_input_embeddings(table)
