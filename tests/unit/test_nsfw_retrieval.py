"""NSFW@top-1 rate on hand-made embeddings."""

import torch

from safeclip.eval.nsfw_retrieval import unsafe_top1_rate


def test_unsafe_top1_rate_by_hand():
    """Query 0 is nearest the unsafe item, query 1 the safe one, query 2 the unsafe one: 2 of 3 = 66.7 %."""
    unsafe = torch.tensor([[1.0, 0.0]])
    safe = torch.tensor([[0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.1], [0.1, 1.0], [5.0, 4.0]])
    assert abs(unsafe_top1_rate(queries, unsafe, safe) - 200 / 3) < 1e-4
