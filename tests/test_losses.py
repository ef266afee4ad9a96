"""Loss and learning-rate schedule: checked against hand computations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from surgseg.losses import SegmentationLoss, soft_dice_loss
from surgseg.schedule import build_scheduler, warmup_poly


def _logits_and_target() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    target = torch.randint(0, 3, (2, 4, 5), generator=gen)
    target[0, 0, :3] = 255
    target[1, 2, 1] = 255
    return logits, target


def test_cross_entropy_ignores_255_like_a_hand_computation():
    logits, target = _logits_and_target()
    log_probs = logits.log_softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, 3)
    labels = target.reshape(-1)
    kept = [(-log_probs[i, int(t)]).item() for i, t in enumerate(labels) if t != 255]
    expected = sum(kept) / len(kept)
    assert len(kept) == labels.numel() - 4
    loss = SegmentationLoss()({"out": logits}, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_class_weights_weigh_each_pixel_by_its_true_class_like_a_hand_computation():
    logits, target = _logits_and_target()
    weights = [0.5, 2.0, 4.0]
    log_probs = logits.log_softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, 3)
    kept = [(i, int(t)) for i, t in enumerate(target.reshape(-1)) if t != 255]
    expected = sum(-weights[t] * log_probs[i, t].item() for i, t in kept) / sum(
        weights[t] for _, t in kept
    )
    loss = SegmentationLoss(class_weights=weights)({"out": logits}, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() != pytest.approx(SegmentationLoss()({"out": logits}, target).item())
    equal = SegmentationLoss(class_weights=[3.0, 3.0, 3.0])({"out": logits}, target)
    assert equal.item() == pytest.approx(SegmentationLoss()({"out": logits}, target).item())


def test_ignored_pixels_do_not_change_the_loss_or_get_gradient():
    logits, target = _logits_and_target()
    logits.requires_grad_(True)
    other = logits.detach().clone()
    other[0, :, 0, :3] = 100.0  # arbitrary scores where the label is 255
    loss = SegmentationLoss(dice_weight=1.0)({"out": logits}, target)
    loss.backward()
    assert logits.grad[0, :, 0, :3].abs().max() == 0
    assert logits.grad.abs().sum() > 0
    again = SegmentationLoss(dice_weight=1.0)({"out": other}, target)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_dice_is_zero_for_a_perfect_prediction_and_positive_otherwise():
    _, target = _logits_and_target()
    perfect = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2) * 50.0
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = perfect.roll(1, dims=1)
    assert soft_dice_loss(wrong, target).item() > 0.5
    logits, _ = _logits_and_target()
    assert 0 < soft_dice_loss(logits, target).item() < 1


def test_dice_matches_a_hand_computation():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # N=1, C=2, H=1, W=2
    target = torch.tensor([[[0, 255]]])
    p = torch.tensor([[2.0, 0.0]]).softmax(dim=1)[0]  # only the first pixel counts
    dice0 = (2 * p[0] + 1) / (p[0] + 1 + 1)
    dice1 = (0 + 1) / (p[1] + 0 + 1)
    expected = 1 - (dice0 + dice1) / 2
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_aux_and_dice_weights_add_up():
    logits, target = _logits_and_target()
    aux = logits.flip(1)
    ce = SegmentationLoss()
    both = SegmentationLoss(aux_weight=0.5, dice_weight=0.3)
    expected = (
        ce({"out": logits}, target)
        + 0.3 * soft_dice_loss(logits, target)
        + 0.5 * (ce({"out": aux}, target) + 0.3 * soft_dice_loss(aux, target))
    )
    got = both({"out": logits, "aux": aux}, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert SegmentationLoss(aux_weight=0)({"out": logits, "aux": aux}, target) == ce(
        {"out": logits}, target
    )


def test_warmup_then_poly_at_known_steps():
    f = lambda step: warmup_poly(step, total_steps=110, warmup_steps=10, power=0.9)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5**0.9)
    assert f(110) == 0.0
    assert warmup_poly(25, total_steps=100, power=1.0) == pytest.approx(0.75)


def test_scheduler_sets_those_rates_step_by_step():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    scheduler = build_scheduler(opt, total_steps=20, warmup_steps=4, power=2.0)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert seen[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert seen[12] == pytest.approx(0.01 * (1 - 8 / 16) ** 2)
    assert all(a >= b for a, b in itertools.pairwise(seen[3:]))
    assert math.isclose(opt.param_groups[0]["lr"], 0.0)
