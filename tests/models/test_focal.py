"""Lesson 9's focal loss against torchvision's, in value and gradient, inside the SSD loss too;
and the class logits' prior bias."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from models import ssd as det


@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (1.0, 0.25), (0.0, -1.0), (1.5, 0.6)])
def test_focal_loss_and_its_gradient_match_torchvision(gamma, alpha):
    torch.manual_seed(0)
    logits = (3 * torch.randn(4, 189, 6)).requires_grad_()
    target = (torch.rand(4, 189, 6) < 0.1).float()
    ours = det.focal_loss(logits, target, gamma, alpha)
    ref = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-7)
    g_ours, = torch.autograd.grad(ours.sum(), logits)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_focal_gradient_counts_the_factor_s_own_derivative():
    """With the factor alpha_t (1 - p_t)^gamma detached (the old code), an easy example got
    about 1 / (1 + gamma) of focal loss's gradient and a hard one nearly all of it: the
    gradient was not focal loss's. Here it is."""
    logits = torch.tensor([-4.0, -6.0], requires_grad=True)  # an easy negative, a hard positive
    target = torch.tensor([0.0, 1.0])
    g, = torch.autograd.grad(det.focal_loss(logits, target, 2.0, 0.25).sum(), logits)
    p = torch.sigmoid(logits)
    w = (0.25 * target + 0.75 * (1 - target)) * (1 - (p * target + (1 - p) * (1 - target))) ** 2
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    g_detached, = torch.autograd.grad((w.detach() * bce).sum(), logits)
    ratio = (g_detached / g).tolist()
    assert ratio[0] == pytest.approx(1 / 3, abs=0.02) and ratio[1] == pytest.approx(1.0, abs=0.05)


def test_ssd_loss_class_term_is_torchvision_focal_over_the_positives():
    """ssd_loss's class term (focal) = sigmoid_focal_loss summed over the anchors that are not
    ignored, divided by the positives; gradient too. BCE likewise."""
    torch.manual_seed(1)
    anchors = det.make_anchors()
    boxes = torch.tensor([[[0.1, 0.1, 0.6, 0.5], [0.5, 0.5, 0.9, 0.95], [0, 0, 0, 0]],
                          [[0.2, 0.3, 0.4, 0.9], [0.0, 0.0, 1.0, 1.0], [0.6, 0.1, 0.8, 0.3]]])
    labels = torch.tensor([[0, 3, -1], [2, 5, 1]])
    difficult = torch.tensor([[False, False, False], [False, False, True]])
    logits = (2 * torch.randn(2, 189, 6) - 3).requires_grad_()
    offsets = torch.randn(2, 189, 4)
    idx, pos, ignore = det.match_anchors(boxes, labels, difficult, anchors, 0.4)
    assert ignore.any() and pos.any()
    target = F.one_hot(labels.gather(1, idx).clamp(min=0), 6).float() * pos[..., None]
    keep = (~ignore)[..., None].float()
    for focal, ref in ((True, sigmoid_focal_loss(logits, target, alpha=0.25, gamma=1.0, reduction="none")),
                       (False, F.binary_cross_entropy_with_logits(logits, target, reduction="none"))):
        ref = (ref * keep).sum() / pos.sum()
        out = det.ssd_loss(logits, offsets, boxes, labels, difficult, anchors, focal=focal, gamma=1.0, alpha=0.25,
                           threshold=0.4, box_weight=0.0)
        assert out["clas"].item() == pytest.approx(ref.item(), rel=1e-5)
        g_out, = torch.autograd.grad(out["loss"], logits)
        g_ref, = torch.autograd.grad(ref, logits)
        assert torch.allclose(g_out, g_ref, rtol=1e-5, atol=1e-8)


def test_box_weight_scales_only_the_box_term():
    torch.manual_seed(2)
    anchors = det.make_anchors()
    boxes, labels = torch.tensor([[[0.1, 0.1, 0.6, 0.5]]]), torch.tensor([[1]])
    args = (torch.randn(1, 189, 3), torch.randn(1, 189, 4), boxes, labels, torch.zeros(1, 1, dtype=torch.bool), anchors)
    a, b = det.ssd_loss(*args, box_weight=1.0), det.ssd_loss(*args, box_weight=0.25)
    assert a["clas"] == b["clas"] and a["loc"] == b["loc"] > 0
    assert b["loss"].item() == pytest.approx(a["clas"].item() + 0.25 * a["loc"].item(), rel=1e-6)


def test_prior_bias():
    """RetinaNet's: prior 0.01 -> bias -log(99) = -4.595; every class logit of every grid starts
    there, so with the conv's weights zeroed every class's probability is the prior."""
    assert det.prior_bias(0.01) == pytest.approx(-math.log(99)) == pytest.approx(-4.595, abs=1e-3)
    assert det.prior_bias(0.5) == 0.0
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="prior"):
            det.prior_bias(bad)
    cfg = det.DetConfig(num_classes=6, backbone="narrow", width=4, size=64, p=0.0)
    for prior in (0.01, 0.1):
        model = det.SSD(cfg, nf=16, prior=prior).eval()
        for out in model.head.outs:
            assert torch.allclose(out.clas.bias, torch.full_like(out.clas.bias, det.prior_bias(prior)))
            torch.nn.init.zeros_(out.clas.weight)
        with torch.no_grad():
            logits, _ = model(torch.randn(2, 3, 64, 64))
        assert torch.allclose(torch.sigmoid(logits), torch.full_like(logits, prior), rtol=1e-5)


def test_pascal_ssd_builds_its_head_from_the_config_prior():
    from pipelines.lessons.pascal import SSD_CONFIGS, PascalSSD

    cfg = dataclasses.replace(SSD_CONFIGS["tiny"], prior=0.05)
    model = PascalSSD().build_model(cfg)
    assert all(torch.allclose(o.clas.bias, torch.full_like(o.clas.bias, -math.log(19))) for o in model.head.outs)
    assert SSD_CONFIGS["default"].prior == 0.01
