"""Benchmark: a base-CLIP pretraining step with captions padded to the longest caption vs to max_text_length.

    python benchmarks/pretrain_padding.py                    # a small offline world, default base size (~1 min)
    python benchmarks/pretrain_padding.py --steps 6 --json /tmp/padding.json

`safeclip world pretrain` (and so `safeclip demo`) pads the world's captions to the longest one of the
training set (``PretrainSettings.text_padding="longest"``) instead of to ``max_text_length`` (40). The
text encoder's causal mask and its pooling at the first end token make every position after the end
token irrelevant to the embedding, so both paddings give the same embeddings; the benchmark checks that
(largest absolute difference of the text embeddings) and times forward + backward + AdamW steps of the
default base CLIP on the same batches, the two paddings taking their steps in turn (round-robin, so
both see the same machine load). The ratio uses each padding's fastest step and its median step.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from safeclip.data.quadruplets import read_rows
from safeclip.models.clip import tiny_image_processor
from safeclip.world import build_world
from safeclip.world.pretrain import PretrainSettings, pixel_tensor, untrained_base
from safeclip.world.scenes import IMAGE_SIZE


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per padding (after one warm-up each)")
    parser.add_argument("--rows", type=int, default=1024, help="training quadruplets of the small world")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    settings = PretrainSettings()
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(Path(tmp) / "world", seed=0, n_train=args.rows, n_val=20, n_test=20, n_found=20,
                            n_distractors=20, progress=False)
        rows = read_rows(world / "train.jsonl")
        texts = [r["safe_text"] for r in rows] + [r["unsafe_text"] for r in rows]
        pixels = pixel_tensor([world / r["safe_image"] for r in rows] + [world / r["unsafe_image"] for r in rows],
                               tiny_image_processor(IMAGE_SIZE))
    tokenizer, first = untrained_base(texts, settings)
    paddings = ("max_length", "longest")
    tokens = {p: tokenizer(texts, padding=p, truncation=True, max_length=settings.max_text_length, return_tensors="pt")
              for p in paddings}
    models = {p: copy.deepcopy(first) for p in paddings}

    with torch.no_grad():  # same weights, same captions: the paddings must give the same embeddings
        first.eval()
        embeds = {p: first.get_text_features(input_ids=tokens[p]["input_ids"][:256],
                                             attention_mask=tokens[p]["attention_mask"][:256]) for p in paddings}
        embeds = {p: e if isinstance(e, torch.Tensor) else e.pooler_output for p, e in embeds.items()}
    max_diff = float((embeds["max_length"] - embeds["longest"]).abs().max())

    optimizers = {p: torch.optim.AdamW(models[p].parameters(), lr=settings.lr) for p in paddings}
    batch = settings.batch_size
    times: dict[str, list[float]] = {p: [] for p in paddings}
    for step in range(args.steps + 1):
        index = torch.arange(step * batch, (step + 1) * batch) % len(texts)
        for p in paddings:
            model, optimizer = models[p], optimizers[p]
            model.train()
            started = time.perf_counter()
            out = model(input_ids=tokens[p]["input_ids"][index], attention_mask=tokens[p]["attention_mask"][index],
                        pixel_values=pixels[index], return_loss=True)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if step:  # the first step of each is a warm-up
                times[p].append(time.perf_counter() - started)
    result = {
        "text_length": {p: int(tokens[p]["input_ids"].shape[1]) for p in paddings},
        "seconds_per_step": {p: {"min": min(t), "median": statistics.median(t)} for p, t in times.items()},
        "speedup_min": min(times["max_length"]) / min(times["longest"]),
        "speedup_median": statistics.median(times["max_length"]) / statistics.median(times["longest"]),
        "text_embedding_max_abs_diff": max_diff,
        "batch": batch, "steps": args.steps, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(f"text length: max_length {result['text_length']['max_length']}, longest {result['text_length']['longest']}")
    for p in paddings:
        print(f"{p:>10}: {result['seconds_per_step'][p]['min']:.3f} s/step fastest, "
              f"{result['seconds_per_step'][p]['median']:.3f} median")
    print(f"speedup longest vs max_length: {result['speedup_min']:.2f}x (fastest), "
          f"{result['speedup_median']:.2f}x (median); text embeddings max |diff| {max_diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
