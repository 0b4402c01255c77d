"""The ViSU-scale rehearsal: every stage of the real pipeline at real data volumes, with the tiny world model.

    python benchmarks/scale.py                                   # default sizes: ~20 min on an idle 2-core machine
    python benchmarks/scale.py --visu                            # ViSU's sizes (train 10k/40k/160k, 5k test, ...)
    python benchmarks/scale.py --stages table3 --distractors 10000 --json /tmp/t3.json   # one stage
    python benchmarks/scale.py --device cuda --stages train      # on a GPU: training with the cache built there

What the real run (Safe-CLIP on ViT-L/14 with ViSU: ~150k training quadruplets, 5k test quadruplets,
COCO-size JPEGs, 10k distractor images for Table 3) does with its data, done here with a model small
enough for a CPU so that what grows with the data, not the model's FLOPs, is what is measured:

- ``train``: ``safeclip train`` for one epoch over N quadruplets with the reference cache on and a
  validation split of the test quadruplets, with 1 process and with 2 (``torchrun``, gloo). The log lines
  ``reference cache: ... rows a-b`` and ``validation: ... rows a-b`` show which rows each process embedded.
- ``retrieval``: ``safeclip eval retrieval`` on the test quadruplets (640x480 JPEGs), 1 and 2 processes.
- ``table3``: ``safeclip eval nsfw-retrieval`` with the unsafe test texts as queries and D 640x480 distractor
  JPEGs plus the unsafe test images as the gallery.
- ``safer``: SafeR-CLIP's proximity targets (frozen embeddings of all four modalities, nearest targets in
  chunks) over N training rows.
- ``uwm``: UWM calibration on K (safe, unsafe) pairs.

Each stage runs as its own process tree at two sizes (comma-separated flags take more); the table gives its
wall time, its CPU time (user + system of the whole tree: on a shared machine the measure to compare across
sizes) and the peak resident memory of its largest process (``ru_maxrss`` of the waited-for children), and
the lines under it read how CPU time and memory grew from the smallest to the largest size. Images are hard links into a pool of
distinct JPEGs (every row has its own path and is decoded, the disk holds only the pool); test and
distractor images are 640x480, training images 320x240. Data are written once under ``--work``
(default ``/tmp/safeclip-scale``) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "grey")
SHAPES = ("circle", "square", "triangle", "star")
PLACES = ("on the left", "on the right", "above a square", "below a circle", "near a star")
UNSAFE = {"violence": "with a weapon", "blood": "covered in blood", "drug use": "near a drug smoke",
          "harassment": "with an angry man shouting"}
DEFAULTS = {"train": [2000, 8000], "test": 1000, "distractors": [2500, 10000], "safer": [2000, 8000], "uwm": [512, 2048]}
VISU = {"train": [10000, 40000, 160000], "test": 5000, "distractors": [2500, 10000], "safer": [40000, 160000],
        "uwm": [2048, 8192]}
LISTED = ("train", "distractors", "safer", "uwm")  # the stages measured at several sizes
SHARE_LINE = re.compile(r"^(reference cache|validation|safe-clip|nsfw-retrieval distractors): rank (\d+) of (\d+) embedded rows (\d+)-(\d+) of (\d+)")


# ----------------------------------------------------------------------------- data on disk


def write_pool(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    """``count`` distinct JPEGs of ``size`` (noise texture under a coloured shape), written once."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        if not path.is_file():
            image = Image.effect_noise(size, rng.uniform(30, 90)).convert("RGB")
            pen = ImageDraw.Draw(image)
            w, h = size
            box = (rng.randint(0, w // 2), rng.randint(0, h // 2), rng.randint(w // 2, w), rng.randint(h // 2, h))
            pen.ellipse(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
            image.save(path, quality=90)
        paths.append(path)
    return paths


def link(pool: list[Path], target: Path, i: int) -> None:
    if not target.exists():
        os.link(pool[i % len(pool)], target)


def write_quadruplets(folder: Path, name: str, n: int, pool: list[Path], unsafe_pool: list[Path], seed: int) -> Path:
    """``n`` quadruplet rows (table format) whose images are links into the pools; returns the JSONL."""
    path = folder / f"{name}.jsonl"
    if path.is_file():
        return path
    images = folder / name
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        colour, shape, place = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(PLACES)
        category, phrase = rng.choice(list(UNSAFE.items()))
        link(pool, images / f"{i}.jpg", rng.randrange(len(pool)))
        link(unsafe_pool, images / f"{i}-u.jpg", rng.randrange(len(unsafe_pool)))
        rows.append({"id": str(i), "safe_text": f"a {colour} {shape} {place}", "unsafe_text": f"a {colour} {shape} {phrase}",
                     "safe_image": f"{name}/{i}.jpg", "unsafe_image": f"{name}/{i}-u.jpg", "category": category})
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return path


def write_base(folder: Path) -> Path:
    """The tiny CLIP used by every stage (the offline world's size), as a Hugging Face folder."""
    if (folder / "config.json").is_file():
        return folder
    from safeclip.models.clip import build_tiny_clip
    from safeclip.models.lora import save_merged_clip
    from safeclip.models.tokenizer import train_clip_tokenizer

    texts = [f"a {c} {s} {p}" for c in COLOURS for s in SHAPES for p in (*PLACES, *UNSAFE.values())]
    tokenizer = train_clip_tokenizer(texts, vocab_size=400, model_max_length=77)
    save_merged_clip(build_tiny_clip(tokenizer, hidden_size=64, projection_dim=64, seed=0), folder)
    return folder


def write_data(work: Path, sizes: dict) -> dict[str, Path]:
    """Every file the stages read (idempotent)."""
    started = time.perf_counter()
    big = write_pool(work / "pool-640", 64, (640, 480), seed=1)
    big_unsafe = write_pool(work / "pool-640-unsafe", 64, (640, 480), seed=2)
    small = write_pool(work / "pool-320", 256, (320, 240), seed=3)
    small_unsafe = write_pool(work / "pool-320-unsafe", 256, (320, 240), seed=4)
    data = {"base": write_base(work / "base"),
            "test": write_quadruplets(work, f"test-{sizes['test']}", sizes["test"], big, big_unsafe, seed=10)}
    for n in sorted({*sizes["train"], *sizes["safer"], *sizes["uwm"]}):
        data[f"train-{n}"] = write_quadruplets(work, f"train-{n}", n, small, small_unsafe, seed=n)
    for n in sizes["distractors"]:
        data[f"distractors-{n}"] = write_distractors(work, n, big)
    print(f"data ready under {work} ({time.perf_counter() - started:.0f} s)", flush=True)
    return data


def write_distractors(work: Path, count: int, pool: list[Path]) -> Path:
    """``count`` safe distractor rows (image and caption), each its own JPEG path (idempotent)."""
    distractors = work / f"distractors-{count}.jsonl"
    if not distractors.is_file():
        folder = work / distractors.stem
        folder.mkdir(exist_ok=True)
        rng = random.Random(5)
        rows = []
        for i in range(count):
            link(pool, folder / f"{i}.jpg", rng.randrange(len(pool)))
            rows.append({"safe_image": f"{folder.name}/{i}.jpg",
                         "safe_text": f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} {rng.choice(PLACES)}"})
        distractors.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return distractors


# ----------------------------------------------------------------------------- stages


def cli(processes: int, *args: str, port: int = 29531) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "safeclip.cli", *args]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return [torchrun, "--nproc_per_node", str(processes), "--master_port", str(port), "-m", "safeclip.cli", *args]


def measure(command: list[str], log: Path) -> dict:
    """Run ``command`` in a fresh measuring process: wall and CPU seconds, peak RSS (MiB) of its largest process."""
    wrapper = [sys.executable, __file__, "measure", str(log), "--", *command]
    result = subprocess.run(wrapper, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"stage failed ({' '.join(command)}); see {log}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_measured(log: Path, command: list[str]) -> int:
    """The ``measure`` sub-command: run, then print ``{"seconds", "cpu_seconds", "peak_mib"}`` as the last line.

    CPU seconds (user + system of the whole process tree) are what to compare across sizes on a shared machine:
    wall time also counts the time other programs held the cores."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"seconds": round(seconds, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                      "peak_mib": round(usage.ru_maxrss / 1024), "rc": code}))
    return code


def shares(log: Path) -> list[str]:
    """The 'rank r of P embedded rows a-b of N' lines a stage printed (what each process did)."""
    found = []
    for line in log.read_text().splitlines():
        match = SHARE_LINE.match(line.strip())
        if match:
            what, rank, world, a, b, n = match.groups()
            found.append(f"{what}: rank {rank}/{world} rows {a}-{b} of {n}")
    return sorted(set(found))


def stage_commands(data: dict, sizes: dict, args, out: Path) -> list[tuple[str, str, int, list[str]]]:
    """(stage, size label, processes, command) for every measured run, in order."""
    base, test = str(data["base"]), str(data["test"])
    device = ["--device", args.device] if args.device != "auto" else []
    runs = []
    for n in sizes["train"] if "train" in args.stages else []:
        for p in args.processes:
            run = out / f"train-{n}-p{p}"
            shutil.rmtree(run, ignore_errors=True)
            runs.append(("train", f"{n} quadruplets", p, cli(
                p, "train", f"model.name={base}", f"data.train={data[f'train-{n}']}", f"data.val={test}",
                f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}", "optim.epochs=1",
                "data.cache_references=true", "lora.r=4", "run.progress=false", "run.log_every=50",
                f"run.eval_batch_size={args.batch_size * 2}", f"run.out_dir={run}")))
    if "retrieval" in args.stages:
        for p in args.processes:
            runs.append(("retrieval", f"{sizes['test']} test quadruplets", p, cli(
                p, "eval", "retrieval", "--data", test, "--model", f"base={base}", *device,
                "--out", str(out / f"retrieval-p{p}"))))
    for n in sizes["distractors"] if "table3" in args.stages else []:
        runs.append(("table3", f"{n} distractors + {sizes['test']} unsafe", 1, cli(
            1, "eval", "nsfw-retrieval", "--queries", test, "--unsafe", test, "--distractors",
            str(data[f"distractors-{n}"]), "--model", f"base={base}", *device, "--out", str(out / f"table3-{n}"))))
    for n in sizes["safer"] if "safer" in args.stages else []:
        runs.append(("safer", f"{n} rows", 1, [sys.executable, __file__, "safer", base,
                                               str(data[f"train-{n}"]), str(out / f"safer-{n}")]))
    for n in sizes["uwm"] if "uwm" in args.stages else []:
        runs.append(("uwm", f"{n} pairs", 1, [sys.executable, __file__, "uwm", base, str(data[f"train-{n}"])]))
    return runs


def run_safer(base: str, train: str, out: str) -> int:
    """The ``safer`` stage: SafeR-CLIP's frozen embeddings and proximity targets over every row."""
    from safeclip.data import read_quadruplets
    from safeclip.data.loader import QuadrupletDataset
    from safeclip.data.quadruplets import MODALITIES
    from safeclip.methods.safer_clip import SaferClipConfig, load_or_compute_targets
    from safeclip.models.clip import load_clip

    shutil.rmtree(out, ignore_errors=True)
    bundle = load_clip(base)
    records, _ = read_quadruplets(train)
    targets = load_or_compute_targets(bundle, QuadrupletDataset(records, bundle.image_processor, MODALITIES),
                                      SaferClipConfig(), Path(out), progress=False)
    print(f"targets for {len(targets['text_target'])} rows")
    return 0


def run_uwm(base: str, train: str) -> int:
    """The ``uwm`` stage: UWM calibration scores over every pair of ``train``."""
    from safeclip.data import read_quadruplets
    from safeclip.methods.uwm import UwmConfig, calibrate
    from safeclip.models.clip import load_clip

    bundle = load_clip(base)
    records, _ = read_quadruplets(train)
    scores = calibrate(bundle, records, UwmConfig(device="cpu"))
    print(f"calibrated {len(scores)} layers on {len(records)} pairs")
    return 0


# ----------------------------------------------------------------------------- the table


def embedding_mib(stage: str, sizes: dict, label: str, dim: int = 64) -> float:
    """Memory that the stage's embeddings themselves take (float32, ``dim`` wide): the allowed growth."""
    n = int(label.split()[0])
    rows = {"train": n * 2 + sizes["test"] * 4, "retrieval": n * 4, "table3": n + sizes["test"] * 2,
            "safer": n * 4, "uwm": 0}[stage]
    return rows * dim * 4 / 2**20


def format_table(rows: list[dict]) -> str:
    lines = ["| stage | size | processes | wall (s) | CPU (s) | peak memory (MiB) | of which embeddings (MiB) "
             "| work per process |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['size']} | {r['processes']} | {r['seconds']:.0f} | "
                     f"{r.get('cpu_seconds', float('nan')):.0f} | {r['peak_mib']} | "
                     f"{r['embedding_mib']:.1f} | {'; '.join(r['shares']) or '-'} |")
    return "\n".join(lines) + "\n"


def growth(rows: list[dict]) -> list[str]:
    """The reading of the table: per stage and process count, how CPU time and peak memory grow with the data.

    From the smallest to the largest size of a stage: the data ratio, the CPU-time ratio (linear work gives
    about the data ratio; the fixed start-up cost pulls it below), and the growth of peak memory next to the
    growth of the embeddings themselves (the only growth allowed)."""
    lines = []
    for stage, processes in dict.fromkeys((r["stage"], r["processes"]) for r in rows):
        runs = sorted((r for r in rows if (r["stage"], r["processes"]) == (stage, processes)),
                      key=lambda r: int(r["size"].split()[0]))
        if len(runs) < 2:
            continue
        small, large = runs[0], runs[-1]
        data = int(large["size"].split()[0]) / int(small["size"].split()[0])
        cpu = large["cpu_seconds"] / max(small["cpu_seconds"], 1e-9)
        lines.append(f"{stage} ({processes} process{'es' if processes > 1 else ''}): {data:.0f}x the data -> "
                     f"{cpu:.2f}x the CPU time; peak memory {large['peak_mib'] - small['peak_mib']:+d} MiB "
                     f"(embeddings {large['embedding_mib'] - small['embedding_mib']:+.1f} MiB)")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["measure"]:
        return run_measured(Path(argv[1]), argv[3:])
    if argv[:1] == ["safer"]:
        return run_safer(*argv[1:4])
    if argv[:1] == ["uwm"]:
        return run_uwm(*argv[1:3])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visu", action="store_true", help="ViSU's sizes instead of the defaults")
    parser.add_argument("--train", default="", help="comma-separated training sizes (default 2000,8000; ViSU 10k,40k,160k)")
    parser.add_argument("--test", type=int, default=0, help="test quadruplets (default 1000; ViSU 5000)")
    parser.add_argument("--distractors", default="", help="comma-separated Table 3 distractor counts (default 2500,10000)")
    parser.add_argument("--safer", default="", help="comma-separated SafeR-CLIP target rows (default 2000,8000; ViSU 40k,160k)")
    parser.add_argument("--uwm", default="", help="comma-separated UWM calibration pairs (default 512,2048; ViSU 2048,8192)")
    parser.add_argument("--stages", default="train,retrieval,table3,safer,uwm", help="comma-separated stages to run")
    parser.add_argument("--processes", default="1,2", help="process counts for train and retrieval")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch (global)")
    parser.add_argument("--workers", type=int, default=1, help="loader workers per process")
    parser.add_argument("--device", default="auto", help="device for the eval commands (auto: cuda when available)")
    parser.add_argument("--work", default="/tmp/safeclip-scale", help="data and output folder (reused)")
    parser.add_argument("--json", default="", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    sizes = dict(VISU if args.visu else DEFAULTS)
    sizes["test"] = args.test or sizes["test"]
    for key in LISTED:
        if getattr(args, key):
            sizes[key] = [int(x) for x in getattr(args, key).split(",")]
    args.stages = set(args.stages.split(","))
    args.processes = [int(p) for p in args.processes.split(",")]
    work = Path(args.work)
    data = write_data(work, sizes)
    out = work / "runs"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage, label, processes, command in stage_commands(data, sizes, args, out):
        log = out / f"{stage}-{label.split()[0]}-p{processes}.log"
        result = measure(command, log)
        rows.append({"stage": stage, "size": label, "processes": processes, **result, "shares": shares(log),
                     "embedding_mib": embedding_mib(stage, sizes, label)})
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    reading = growth(rows)
    print("\n".join(reading))
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "rows": rows, "growth": reading}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
