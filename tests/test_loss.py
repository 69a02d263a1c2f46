"""DistillationLoss against the reference formula, a by-hand KL, the T^2 argument and its edge cases."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kd_helpers import DistillationLoss, KDError


def reference(student_logits, teacher_logits, labels, T, alpha):
    """The reference experiment's formula, written out independently."""
    distill = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(student_logits / T, dim=1),
                                                   F.softmax(teacher_logits / T, dim=1)) * T * T
    student = nn.CrossEntropyLoss()(student_logits, labels)
    return alpha * distill + (1 - alpha) * student, distill, student


def by_hand_kl(student_logits, teacher_logits, T):
    """sum_c p_t(c) * (log p_t(c) - log p_s(c)), averaged over rows, in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student_logits.tolist(), teacher_logits.tolist(), strict=True):
        s_exp = [math.exp(v / T) for v in s_row]
        t_exp = [math.exp(v / T) for v in t_row]
        p_s = [v / sum(s_exp) for v in s_exp]
        p_t = [v / sum(t_exp) for v in t_exp]
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
    return total / len(student_logits)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_matches_reference_and_by_hand(num_classes, T, alpha):
    g = torch.Generator().manual_seed(num_classes * 100 + int(T * 10))
    s = torch.randn(6, num_classes, generator=g, dtype=torch.float64) * 3
    t = torch.randn(6, num_classes, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, num_classes, (6,), generator=g)
    total, distill, student = DistillationLoss(temperature=T, alpha=alpha)(s, t, y)
    ref_total, ref_distill, ref_student = reference(s, t, y, T, alpha)
    torch.testing.assert_close(total, ref_total)
    torch.testing.assert_close(distill, ref_distill)
    torch.testing.assert_close(student, ref_student)
    assert distill.item() == pytest.approx(by_hand_kl(s, t, T) * T * T, rel=1e-9)


def test_alpha_zero_is_pure_ce_and_one_is_pure_kd():
    s, t, y = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 2, (8,))
    total0, distill0, student0 = DistillationLoss(4.0, 0.0)(s, t, y)
    torch.testing.assert_close(total0, F.cross_entropy(s, y))
    assert distill0.item() > 0  # still computed and logged, just not weighted
    total1, distill1, _ = DistillationLoss(4.0, 1.0)(s, t, y)
    torch.testing.assert_close(total1, distill1)


def test_identical_logits_give_zero_kl():
    s = torch.randn(4, 3)
    _, distill, _ = DistillationLoss(2.0, 0.5)(s, s.clone(), torch.zeros(4, dtype=torch.long))
    assert abs(distill.item()) < 1e-6


def test_t_squared_keeps_gradient_scale():
    """Without T^2 the soft-target gradient shrinks like 1/T^2; with it, it stays roughly constant."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 2, generator=g)
    s0 = torch.randn(64, 2, generator=g) * 0.5
    y = torch.zeros(64, dtype=torch.long)
    norms_raw, norms_scaled = {}, {}
    for T in (2.0, 4.0, 8.0, 16.0):
        s = s0.clone().requires_grad_(True)
        _, distill, _ = DistillationLoss(T, 1.0)(s, t, y)
        distill.backward()
        norms_scaled[T] = s.grad.norm().item()
        norms_raw[T] = norms_scaled[T] / T**2  # the gradient of the KL term alone
    for T in (4.0, 8.0, 16.0):
        assert norms_raw[T] / norms_raw[2.0] == pytest.approx((2.0 / T) ** 2, rel=0.35)
        assert norms_scaled[T] / norms_scaled[2.0] == pytest.approx(1.0, rel=0.35)


def test_only_student_gets_gradients():
    s = torch.randn(4, 2, requires_grad=True)
    t = torch.randn(4, 2, requires_grad=True)
    total, _, _ = DistillationLoss()(s, t, torch.tensor([0, 1, 0, 1]))
    total.backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"alpha": -0.1}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"temperature": "4"}, "temperature"),
])
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(**kwargs)


@pytest.mark.parametrize("s_shape, t_shape, labels, message", [
    ((4, 2), (4, 3), [0, 1, 0, 1], "same shape"),
    ((4, 2), (3, 2), [0, 1, 0, 1], "same shape"),
    ((4, 2), (4, 2), [0, 1, 0], "one class per row"),
    ((4, 2), (4, 2), [[0], [1], [0], [1]], "one class per row"),
    ((4, 2), (4, 2), [0, 1, 2, 1], "label 2 is outside"),
    ((4, 2), (4, 2), [0, -1, 0, 1], "label -1 is outside"),
])
def test_bad_tensors(s_shape, t_shape, labels, message):
    with pytest.raises(KDError, match=message):
        DistillationLoss()(torch.randn(*s_shape), torch.randn(*t_shape), torch.tensor(labels))


def test_float_labels_rejected():
    with pytest.raises(KDError, match="integer"):
        DistillationLoss()(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0.0, 1.0]))
