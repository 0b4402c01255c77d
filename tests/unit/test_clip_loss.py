"""CLIP's pretraining loss is half of losses.symmetric_info_nce with a learnt logit scale, bit for bit the loss the
world's base CLIP has always been trained with (and its gradients, through the scale too)."""

import torch
import torch.nn.functional as F

from safeclip.losses import symmetric_info_nce


def reference_clip_loss(text, image, logit_scale):
    # the loss as world/pretrain.py wrote it before it used losses.py (Radford et al., 2021)
    logits = logit_scale.exp().clamp(max=100) * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    targets = torch.arange(len(text))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def test_same_value_and_gradients_bit_for_bit():
    torch.manual_seed(0)
    text, image = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    scale = torch.nn.Parameter(torch.tensor(2.6592))
    expected = reference_clip_loss(text, image, scale)
    expected_grads = torch.autograd.grad(expected, (text, image, scale))
    loss = symmetric_info_nce(text, image, logit_scale=scale.exp().clamp(max=100)) / 2
    grads = torch.autograd.grad(loss, (text, image, scale))
    assert torch.equal(loss, expected)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads))


def test_a_temperature_is_the_inverse_scale():
    torch.manual_seed(1)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(symmetric_info_nce(a, b, 0.05), symmetric_info_nce(a, b, logit_scale=torch.tensor(20.0)))
