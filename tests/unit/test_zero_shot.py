"""Zero-shot accuracy with prompt ensembling on hand-made embeddings."""

import pytest
import torch

from safeclip.eval.zero_shot import class_embeddings, zero_shot_accuracy, zero_shot_predictions


def test_accuracy_one_template():
    classes = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (C=2, T=1, D=2)
    images = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])  # predicted 0, 1, 0
    assert zero_shot_predictions(images, classes).tolist() == [0, 1, 0]
    assert zero_shot_accuracy(images, classes, torch.tensor([0, 1, 1])) == pytest.approx(200 / 3)


def test_templates_are_normalised_before_averaging():
    # Class 0 prompts (10, 0) and (0, 1): normalised mean (1, 1)/sqrt2; class 1: (0, 1).
    # Image (0.6, 0.8): cos with class 0 = 1.4/sqrt2 = 0.99 > 0.8 -> class 0. Averaging the raw vectors
    # would give (5, 0.5) ~ (0.995, 0.0995) with cos 0.677 < 0.8 -> class 1, so this tells them apart.
    classes = torch.tensor([[[10.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 2.0]]])
    assert torch.allclose(class_embeddings(classes)[0], torch.tensor([1.0, 1.0]) / 2**0.5)
    assert zero_shot_accuracy(torch.tensor([[0.6, 0.8]]), classes, torch.tensor([0])) == 100.0


def test_bad_labels_are_rejected():
    classes = torch.eye(2).unsqueeze(1)
    with pytest.raises(ValueError, match="labels"):
        zero_shot_accuracy(torch.eye(2), classes, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="images"):
        zero_shot_accuracy(torch.eye(2), classes, torch.tensor([0]))
