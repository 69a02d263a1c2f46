"""Beyond logits: what else a student can copy from its teacher (hidden states, attention maps).

- :func:`layer_map`: which student layer learns from which teacher layer (data, not code);
- :func:`cosine_hidden_loss` (DistilBERT), :func:`hidden_mse_loss` through a learned :class:`HiddenProjection`
  (TinyBERT), :func:`attention_kl_loss` (MiniLM / TinyBERT): each checks shapes and states its formula;
- :class:`TeacherFeatures`: the teacher's hidden states and attention maps for every training row, computed
  once (and cached on disk) instead of a live teacher forward every step;
- :func:`feature_step`: the logit loss of notebook 01 plus the weighted feature losses, every component returned.

Attention maps need the **eager** attention implementation: PyTorch's fused SDPA kernel never materialises the
attention probabilities, so a model loaded with it returns none (:func:`use_eager_attention`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kd_helpers.errors import KDError
from kd_helpers.train import batch_loss, model_inputs

FEATURES = ("hidden", "cosine", "attention")  # what --feature-loss accepts


@dataclass(frozen=True)
class FeatureWeights:
    """How much each feature loss adds to the logit loss: ``total = logit + hidden * L_mse + cosine * L_cos +
    attention * L_att``. All zero: plain logit KD."""

    hidden: float = 0.0
    cosine: float = 0.0
    attention: float = 0.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise KDError(f"feature weight {name}={value!r}: must be a finite number >= 0")

    @property
    def any(self) -> bool:
        return any(v > 0 for v in asdict(self).values())

    def name(self) -> str:
        """``"logit"``, ``"logit+hidden"``, ``"logit+hidden+attention"``... (weights other than 1 are shown)."""
        parts = [k if v == 1 else f"{k}x{v:g}" for k, v in asdict(self).items() if v > 0]
        return "+".join(["logit", *parts])


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Uniform map ``[(student, teacher), ...]``: the embeddings (0) learn from the teacher's embeddings, and
    student layer ``i`` from teacher layer ``i * teacher_layers / student_layers`` (the top learns from the top).

    Indices count ``hidden_states`` (0 = embeddings output, ``i`` = output of layer ``i``). For a 1-layer
    student of a 6-layer teacher: ``[(0, 0), (1, 6)]``.
    """
    if student_layers < 1 or teacher_layers < student_layers:
        raise KDError(f"layer map: a student of {student_layers} layers for a teacher of {teacher_layers}: "
                      "the student needs 1 to teacher_layers layers")
    step = teacher_layers // student_layers
    return [(0, 0)] + [(i, i * step) for i in range(1, student_layers + 1)]


def num_layers(model: nn.Module) -> int:
    """Transformer layers of a model (``num_hidden_layers``, or DistilBERT's ``n_layers``)."""
    cfg = model.config
    return getattr(cfg, "num_hidden_layers", None) or cfg.n_layers


def use_eager_attention(model: nn.Module) -> nn.Module:
    """Switch ``model`` to the eager attention implementation, the only one that returns attention maps."""
    model.set_attn_implementation("eager")
    return model


def _check_same(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise KDError(f"{name}: student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} differ")


def _check_mask(name: str, states: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.shape != states.shape[:2]:
        raise KDError(f"{name}: attention mask shape {tuple(mask.shape)} does not match states {tuple(states.shape)}")


def cosine_hidden_loss(student_states: torch.Tensor, teacher_states: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """DistilBERT's cosine loss: ``mean over real tokens of 1 - cos(h_s, h_t)``.

    States are ``(batch, tokens, width)`` and must have the same width; ``mask`` is ``(batch, tokens)``, 1 for
    real tokens (padding is left out). The direction is matched, not the length.
    """
    _check_same("cosine hidden loss", student_states, teacher_states)
    _check_mask("cosine hidden loss", student_states, mask)
    keep = mask.bool()
    cos = F.cosine_similarity(student_states[keep].float(), teacher_states[keep].float(), dim=-1)
    return (1.0 - cos).mean()


class HiddenProjection(nn.Module):
    """TinyBERT's ``W_h``: one learned linear map per layer pair, from the student's width to the teacher's.

    Trained with the student (its parameters go to the same optimizer) and thrown away after training.
    """

    def __init__(self, student_width: int, teacher_width: int, pairs: int):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(pairs))
        if student_width == teacher_width:  # start as the identity: the loss first measures the states as they are
            for linear in self.maps:
                nn.init.eye_(linear.weight)
                nn.init.zeros_(linear.bias)

    def forward(self, states: torch.Tensor, pair: int) -> torch.Tensor:
        return self.maps[pair](states)


def hidden_mse_loss(student_states: torch.Tensor, teacher_states: torch.Tensor, mask: torch.Tensor,
                    projection: nn.Module | None = None) -> torch.Tensor:
    """TinyBERT's hidden-state loss: ``mean over real tokens and features of (h_s W + b - h_t)^2``.

    ``projection`` maps the student's width to the teacher's (a ``Linear`` or a callable); without one the
    widths must be equal.
    """
    _check_mask("hidden MSE loss", student_states, mask)
    projected = projection(student_states.float()) if projection is not None else student_states.float()
    _check_same("hidden MSE loss (after projection)", projected, teacher_states)
    keep = mask.bool()
    return F.mse_loss(projected[keep], teacher_states[keep].float())


def attention_kl_loss(student_attention: torch.Tensor, teacher_attention: torch.Tensor,
                      mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """MiniLM's attention transfer: ``KL(A_t || A_s) = sum_k A_t log(A_t / A_s)`` for every head and every
    real query token, averaged over them.

    Attention maps are ``(batch, heads, queries, keys)`` probabilities (rows sum to 1); the student needs as
    many heads as the teacher. ``mask`` ``(batch, tokens)`` drops padded queries (padded keys have probability
    0 in both maps). ``eps`` keeps ``log 0`` finite.
    """
    _check_same("attention KL loss", student_attention, teacher_attention)
    if mask.shape != (student_attention.shape[0], student_attention.shape[2]):
        raise KDError(f"attention KL loss: attention mask shape {tuple(mask.shape)} does not match attention "
                      f"{tuple(student_attention.shape)}")
    t, s = teacher_attention.float(), student_attention.float()
    kl = (t * (torch.log(t + eps) - torch.log(s + eps))).sum(-1)  # (batch, heads, queries)
    weight = mask[:, None, :].float().expand_as(kl)
    return (kl * weight).sum() / weight.sum()


def forward_features(model: nn.Module, batch: dict, device, attentions: bool = True):
    """``model``'s output with every hidden state (and attention map, which needs eager attention)."""
    out = model(**model_inputs(model, batch, device), output_hidden_states=True, output_attentions=attentions)
    if attentions and (not out.attentions or out.attentions[0] is None):  # SDPA gives () and logs a warning
        raise KDError(f"{type(model).__name__} returned no attention maps: call use_eager_attention(model) first")
    return out


class TeacherFeatures:
    """The teacher's hidden states (at the mapped layers) and attention maps (at the mapped layers' attention)
    for every row of a tokenised dataset, kept unpadded in fp16; a batch's are padded on request.

    Building it is one teacher pass (sorted by length); ``cache_path`` keeps it on disk between runs.
    """

    def __init__(self, hidden: list, attention: list):
        self.hidden, self.attention = hidden, attention  # per row: (pairs, L, width), (pairs - 1, heads, L, L)

    @classmethod
    def compute(cls, teacher: nn.Module, dataset, collate, pairs: list, device, batch_size: int = 64):
        hidden, attention = [None] * len(dataset), [None] * len(dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        order = sorted(range(len(dataset)), key=lambda i: lengths[i])
        teacher.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = collate([dataset[i] for i in rows])
                out = forward_features(teacher, batch, device)
                for j, row in enumerate(rows):
                    n = lengths[row]
                    hidden[row] = torch.stack([out.hidden_states[t][j, :n] for _, t in pairs]).half().cpu()
                    attention[row] = torch.stack([out.attentions[t - 1][j, :, :n, :n]
                                                  for _, t in pairs if t > 0]).half().cpu()
        return cls(hidden, attention)

    def __call__(self, idx: torch.Tensor, length: int) -> tuple[list, list]:
        """Padded teacher states for the rows ``idx``: ``[tensor(batch, length, width) per pair]`` and
        ``[tensor(batch, heads, length, length) per attention pair]``."""
        rows = idx.tolist()
        hidden = torch.zeros(len(rows), self.hidden[0].shape[0], length, self.hidden[0].shape[-1])
        heads = self.attention[0].shape[1]
        attention = torch.zeros(len(rows), self.attention[0].shape[0], heads, length, length)
        for j, row in enumerate(rows):
            n = self.hidden[row].shape[1]
            hidden[j, :, :n] = self.hidden[row].float()
            attention[j, :, :, :n, :n] = self.attention[row].float()
        return list(hidden.unbind(1)), list(attention.unbind(1))

    def flat(self) -> dict:
        """Two flat tensors (what is saved): every row's states one after another."""
        return {"hidden": torch.cat([h.flatten() for h in self.hidden]),
                "attention": torch.cat([a.flatten() for a in self.attention])}

    @classmethod
    def from_flat(cls, flat: dict, lengths: list, pairs: int, width: int, heads: int) -> TeacherFeatures:
        hidden, attention, h, a = [], [], 0, 0
        n_att = pairs - 1
        for n in lengths:
            hidden.append(flat["hidden"][h:h + pairs * n * width].view(pairs, n, width))
            attention.append(flat["attention"][a:a + n_att * heads * n * n].view(n_att, heads, n, n))
            h, a = h + pairs * n * width, a + n_att * heads * n * n
        if h != flat["hidden"].numel() or a != flat["attention"].numel():
            raise ValueError("cached teacher features do not match the rows' lengths")
        return cls(hidden, attention)


def live_teacher_features(teacher: nn.Module, batch: dict, pairs: list, device) -> tuple[list, list]:
    """The same states as :class:`TeacherFeatures` gives, from a teacher forward under ``no_grad``."""
    with torch.no_grad():
        out = forward_features(teacher, batch, device)
    return ([out.hidden_states[t] for _, t in pairs], [out.attentions[t - 1] for _, t in pairs if t > 0])


def feature_step(student: nn.Module, batch: dict, teacher_logits: torch.Tensor, teacher_hidden: list,
                 teacher_attention: list, criterion, weights: FeatureWeights, pairs: list,
                 projection: HiddenProjection | None, device) -> tuple[torch.Tensor, dict]:
    """One batch's loss: ``criterion``'s logit loss (alpha blend of notebook 01; transfer-set rows, label
    ``UNLABELLED``, get the teacher's soft targets only, as in ``train_epoch``) plus the weighted feature losses,
    which need no labels.

    Returns ``(total, components)``; ``components`` holds every term (as floats), weighted or not, so the
    plots can show each: ``total_loss, distill_loss, student_loss, hidden_loss, cosine_loss, attention_loss``.
    """
    out = forward_features(student, batch, device, attentions=weights.attention > 0)
    labels = batch["labels"].to(device)
    total, distill, student_ce = batch_loss(criterion, out.logits.float(), teacher_logits.to(device), labels)
    mask = batch["attention_mask"].to(device)
    parts = {"hidden_loss": 0.0, "cosine_loss": 0.0, "attention_loss": 0.0}
    if weights.hidden > 0:
        hidden = sum(hidden_mse_loss(out.hidden_states[s], teacher_hidden[k].to(device), mask,
                                     lambda x, k=k: projection(x, k)) for k, (s, _) in enumerate(pairs)) / len(pairs)
        total = total + weights.hidden * hidden
        parts["hidden_loss"] = hidden.item()
    if weights.cosine > 0:
        cosine = sum(cosine_hidden_loss(out.hidden_states[s], teacher_hidden[k].to(device), mask)
                     for k, (s, _) in enumerate(pairs)) / len(pairs)
        total = total + weights.cosine * cosine
        parts["cosine_loss"] = cosine.item()
    if weights.attention > 0:
        att_pairs = [(s, t) for s, t in pairs if t > 0]
        attention = sum(attention_kl_loss(out.attentions[s - 1], teacher_attention[k].to(device), mask)
                        for k, (s, _) in enumerate(att_pairs)) / len(att_pairs)
        total = total + weights.attention * attention
        parts["attention_loss"] = attention.item()
    return total, {"total_loss": total.item(), "distill_loss": distill.item(), "student_loss": student_ce.item(),
                   **parts}
