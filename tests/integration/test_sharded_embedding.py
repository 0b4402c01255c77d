"""Sharded embedding on 2 CPU processes (gloo) equals one process, bit for bit.

    pytest tests/integration/test_sharded_embedding.py        # ~1 min on 2 cores

Each process embeds a contiguous block of whole batches and the blocks are gathered
(``safeclip.eval.embed.embed_quadruplets(shard=True)``, ``encode_image_files(shard=True)``): the reference
cache built this way, and the embeddings validation and the eval commands compute, are the one-process ones. The split is uneven on
purpose (13 rows in batches of 4 and of 3) so that the processes hold different numbers of rows.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from safeclip.data import read_quadruplets
from safeclip.eval.embed import embed_quadruplets, encode_image_files, shard_rows
from safeclip.models.clip import load_clip
from safeclip.models.lora import add_lora, lora_config, lora_parameters
from safeclip.refcache import load_or_compute_references
from tests.fixtures import write_quadruplets


def encoders_with_adapters(model_dir):
    """The tiny CLIP with non-zero LoRA adapters (the cache must come from the base, with them switched off)."""
    bundle = load_clip(model_dir)
    settings = lora_config(4, 4, 0.0, ["k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    text, vision = add_lora(bundle.text, settings), add_lora(bundle.vision, settings)
    torch.manual_seed(0)
    for model in (text, vision):
        for p in lora_parameters(model).values():
            torch.nn.init.normal_(p, std=0.3)
    return bundle, text, vision


def embed_everything(model_dir, data, cache_dir, *, shard: bool) -> dict[str, torch.Tensor]:
    bundle, text, vision = encoders_with_adapters(model_dir)
    records, report = read_quadruplets(data)
    refs = load_or_compute_references(text, vision, bundle.tokenizer, bundle.image_processor, records,
                                      report.modalities, cache_dir, batch_size=4, shard=shard)
    emb = embed_quadruplets(text, vision, bundle.tokenizer, bundle.image_processor, records, batch_size=3, shard=shard)
    files = encode_image_files(vision, bundle.image_processor, [r.unsafe_image for r in records], batch_size=5,
                               num_workers=1, shard=shard)
    return {**refs, **emb, "unsafe_image_files": files}


def worker(rank: int, world: int, port: int, model_dir, data, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = embed_everything(model_dir, data, out / "cache", shard=True)
        save_file({k: v.contiguous() for k, v in result.items()}, str(out / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_rows_are_whole_batches_covering_every_row():
    assert [shard_rows(13, 4, r, 2) for r in range(2)] == [range(0, 8), range(8, 13)]
    assert [shard_rows(13, 3, r, 2) for r in range(2)] == [range(0, 6), range(6, 13)]
    assert [shard_rows(5, 4, r, 3) for r in range(3)] == [range(0, 0), range(0, 4), range(4, 5)]  # an empty share
    # 150k rows in 586 batches of 256 over 8 processes: batch blocks floor(586 r / 8) = 0, 73, 146, 219, 293, ...
    # -> 73 batches (18,688 rows) each, 74 for ranks 3 and 7; the last batch holds 150,000 - 585 * 256 = 240 rows
    assert [len(shard_rows(150_000, 256, r, 8)) for r in range(8)] == [18_688, 18_688, 18_688, 18_944,
                                                                      18_688, 18_688, 18_688, 18_928]


def test_two_processes_build_the_one_process_cache_and_embeddings(tmp_path, tiny_clip_dir):
    data = write_quadruplets(tmp_path / "d", 13)
    one = embed_everything(tiny_clip_dir, data, tmp_path / "one-cache", shard=False)
    assert set(one) == {"safe_text_ref", "safe_image_ref", "safe_text", "unsafe_text", "safe_image", "unsafe_image",
                        "unsafe_image_files"}
    assert torch.allclose(one["unsafe_image_files"], one["unsafe_image"], atol=1e-6, rtol=0)  # the same images
    # the references are the base model's: with the adapters on, the same texts embed differently
    assert not torch.allclose(one["safe_text_ref"], one["safe_text"])
    mp.spawn(worker, args=(2, free_port(), tiny_clip_dir, data, tmp_path), nprocs=2, join=True)
    for rank in range(2):
        shared = load_file(tmp_path / f"rank{rank}.safetensors")
        assert shared.keys() == one.keys()
        for name in one:
            assert torch.equal(shared[name], one[name]), (rank, name)
    (cache,) = (tmp_path / "cache").glob("references-*.safetensors")
    (single,) = (tmp_path / "one-cache").glob("references-*.safetensors")
    assert cache.name == single.name
    written = load_file(cache)
    assert all(torch.equal(written[k], one[k]) for k in written)


def test_eval_commands_under_torchrun_equal_one_process(tmp_path, tiny_clip_dir):
    """``torchrun --nproc_per_node 2 -m safeclip.cli eval retrieval / nsfw-retrieval`` shard the embedding
    (with a loader worker each), write once, and give the one-process results."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from safeclip.cli import main

    data = write_quadruplets(tmp_path / "d", 13)
    distractors = tmp_path / "d" / "distractors.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    distractors.write_text("".join(json.dumps({"safe_image": r["safe_image"], "safe_text": r["safe_text"]}) + "\n"
                                   for r in rows))
    commands = {
        "retrieval": ["eval", "retrieval", "--data", str(data), "--model", f"base={tiny_clip_dir}", "--batch-size", "4"],
        "nsfw": ["eval", "nsfw-retrieval", "--queries", str(data), "--unsafe", str(data), "--distractors",
                 str(distractors), "--model", f"base={tiny_clip_dir}", "--batch-size", "4"],
    }
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    for name, command in commands.items():
        assert main([*command, "--device", "cpu", "--out", str(tmp_path / f"{name}-one")]) == 0
        result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m",
                                 "safeclip.cli", *command, "--num-workers", "1", "--out", str(tmp_path / f"{name}-two")],
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        (one,), (two,) = ((tmp_path / f"{name}-{n}").glob("*.json") for n in ("one", "two"))
        assert json.loads(one.read_text()) == json.loads(two.read_text()), name
        assert result.stdout.count("wrote ") == 1  # only the first process writes
        assert "rank 0 of 2 embedded rows 0-8 of 13" in result.stdout  # batches of 4: rows 0-8 and 8-13
        assert "rank 1 of 2 embedded rows 8-13 of 13" in result.stdout
