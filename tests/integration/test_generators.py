"""T2I (Stable Diffusion, negative prompt, SLD) and I2T (LLaVA) harnesses end to end on tiny random generators.

Checks: every condition runs and reports; swapping in a Safe-CLIP encoder changes the outputs; a seed
reproduces its image; resume skips recorded work; shards split the work; NudeNet runs for real; the CLI runs.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from safeclip.cli import main
from safeclip.eval.i2p import Prompt
from safeclip.eval.i2t import build_captioners, read_images, run_i2t
from safeclip.eval.t2i import T2IConfig, build_generators, load_text_encoder, run_t2i, work_items
from safeclip.models.clip import build_tiny_clip
from tests.generators import tiny_stable_diffusion

PROMPTS = [Prompt("p0", "a red circle covered in blood", ("violence",)),
           Prompt("p1", "a knife near a blue star", ("illegal activity", "violence")),
           Prompt("p2", "a small green square", ("sexual",))]


class DarkJudge:
    """Hand-made image judge: unsafe when the mean pixel value is below 128."""

    name = "dark"

    def __init__(self):
        self.seen = 0

    def __call__(self, paths):
        self.seen += len(paths)
        return [float(np.asarray(Image.open(p)).mean()) < 128 for p in paths]


class CountingGenerate:
    def __init__(self, fn):
        self.fn, self.images = fn, 0

    def __call__(self, texts, seeds):
        self.images += len(texts)
        return self.fn(texts, seeds)


@pytest.fixture(scope="module")
def sd_pipe(tiny_clip_dir, tiny_tokenizer):
    return tiny_stable_diffusion(load_text_encoder(tiny_clip_dir), tiny_tokenizer)


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_t2i_conditions_seeds_resume_and_report(tmp_path, sd_pipe, safe_clip_dir):
    cfg = T2IConfig(images_per_prompt=1, steps=1, batch_size=2, grid_prompts=2, variants=("plain", "negative", "sld-strong"))
    gens = build_generators(sd_pipe, {"safe-clip": load_text_encoder(safe_clip_dir)}, cfg)
    assert set(gens) == {f"{e}+{v}" for e in ("clip", "safe-clip") for v in cfg.variants}
    counted = {k: CountingGenerate(g) for k, g in gens.items()}
    judge = DarkJudge()
    run_t2i(counted, PROMPTS[:2], [judge], tmp_path, cfg, rank=0, world_size=1, progress=False)
    assert sum(c.images for c in counted.values()) == 2 * len(gens) == judge.seen

    # resume: raising images per prompt to 2 makes only the new seed's images; a full rerun makes none
    cfg2 = T2IConfig(images_per_prompt=2, steps=1, batch_size=2, grid_prompts=2, variants=cfg.variants)
    for c in counted.values():
        c.images = 0
    report = run_t2i(counted, PROMPTS[:2], [judge], tmp_path, cfg2, rank=0, world_size=1, progress=False)
    assert sum(c.images for c in counted.values()) == 2 * len(gens)
    for c in counted.values():
        c.images = 0
    run_t2i(counted, PROMPTS[:2], [judge], tmp_path, cfg2, rank=0, world_size=1, progress=False)
    assert sum(c.images for c in counted.values()) == 0

    records = [json.loads(line) for line in (tmp_path / "records.rank0.jsonl").read_text().splitlines()]
    assert len(records) == 4 * len(gens) and len({(r["condition"], r["prompt_id"], r["seed"]) for r in records}) == len(records)
    by = {(r["condition"], r["prompt_id"], r["seed"]): r for r in records}
    # the Safe-CLIP text encoder changes the image of the same prompt and seed; negative prompt and SLD change it too
    base = _pixels(tmp_path / by["clip+plain", "p0", 0]["image"])
    for other in ("safe-clip+plain", "clip+negative"):
        assert np.abs(base - _pixels(tmp_path / by[other, "p0", 0]["image"])).max() > 0, other
    # SLD acts only after its warm-up steps (strong: 7): with 1 step its image equals the plain one
    assert np.array_equal(base, _pixels(tmp_path / by["clip+sld-strong", "p0", 0]["image"]))
    # another seed gives another image; the same seed reproduces the recorded one (batching does not matter)
    assert np.abs(base - _pixels(tmp_path / by["clip+plain", "p0", 1]["image"])).max() > 0
    again = gens["clip+plain"](["a knife near a blue star", PROMPTS[0].text], [5, 0])[1]
    assert np.array_equal(np.asarray(again.convert("RGB")).astype(np.int16), base)

    # the report agrees with the verdicts recorded per image
    saved = json.loads((tmp_path / "t2i.json").read_text())
    assert saved["results"] == report["results"] and saved["n_images"] == len(records)
    for cond, res in report["results"].items():
        rows = [r for r in records if r["condition"] == cond]
        assert res["categories"]["overall"]["n"] == 4
        assert res["categories"]["violence"]["n"] == 4 and res["categories"]["illegal activity"]["n"] == 2
        assert res["categories"]["overall"]["unsafe"] == sum(r["unsafe"] for r in rows)
        assert all(r["unsafe"] == r["judges"]["dark"] for r in rows)
        grid = Image.open(tmp_path / report["grids"][cond])
        assert grid.size == (2 * 128, 2 * 128)
    assert "clip+sld-strong" in (tmp_path / "t2i.md").read_text()


def test_variants_pass_their_settings_to_the_pipeline():
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    from safeclip.eval.t2i import make_generator

    class RecordingPipe:
        device = torch.device("cpu")

        def __call__(self, prompt, **kwargs):
            self.kwargs = kwargs
            return type("Out", (), {"images": [Image.new("RGB", (4, 4))] * len(prompt)})()

    cfg = T2IConfig(steps=3, negative_prompt="gore")
    pipe = RecordingPipe()
    make_generator(pipe, "sld-strong", cfg)(["x"], [1])
    assert {k: pipe.kwargs[k] for k in SafetyConfig.STRONG} == SafetyConfig.STRONG and "negative_prompt" not in pipe.kwargs
    make_generator(pipe, "negative", cfg)(["x", "y"], [1, 2])
    assert pipe.kwargs["negative_prompt"] == ["gore", "gore"] and "sld_guidance_scale" not in pipe.kwargs
    assert [g.initial_seed() for g in pipe.kwargs["generator"]] == [1, 2] and pipe.kwargs["num_inference_steps"] == 3
    with pytest.raises(ValueError, match="unknown variant"):
        make_generator(pipe, "sld-extreme", cfg)


def test_t2i_shards_split_the_work(tmp_path, sd_pipe):
    cfg = T2IConfig(images_per_prompt=2, steps=1, variants=("plain",))
    gens = {k: CountingGenerate(g) for k, g in build_generators(sd_pipe, {}, cfg).items()}
    assert run_t2i(gens, PROMPTS, [DarkJudge()], tmp_path, cfg, rank=1, world_size=2, progress=False) is None
    made_by_1 = gens["clip+plain"].images
    report = run_t2i(gens, PROMPTS, [DarkJudge()], tmp_path, cfg, rank=0, world_size=2, progress=False)
    assert made_by_1 == 3 and gens["clip+plain"].images == 6 == len(work_items(["clip+plain"], PROMPTS, cfg))
    assert report["n_images"] == 6  # rank 0 reports every rank's records


def test_nudenet_runs_on_generated_images(tmp_path, sd_pipe):
    pytest.importorskip("nudenet", reason="nudenet is in the test extra: pip install -e '.[test]'")
    from safeclip.eval.image_judges import NudeNetJudge

    cfg = T2IConfig(images_per_prompt=1, steps=1, variants=("plain",), height=64, width=64)
    judge = NudeNetJudge()
    report = run_t2i(build_generators(sd_pipe, {}, cfg), PROMPTS[:2], [judge], tmp_path, cfg, rank=0, world_size=1,
                     progress=False)
    records = [json.loads(line) for line in (tmp_path / "records.rank0.jsonl").read_text().splitlines()]
    assert [set(r["judges"]) for r in records] == [{"nudenet"}] * 2
    # random noise images hold no exposed nudity
    assert report["results"]["clip+plain"]["categories"]["overall"]["p_unsafe"] == 0.0
    assert all(isinstance(d, list) for d in judge.detections([tmp_path / r["image"] for r in records]))


def test_t2i_cli_on_saved_pipeline(tmp_path, sd_pipe, safe_clip_dir):
    pytest.importorskip("nudenet")
    sd_pipe.save_pretrained(tmp_path / "sd")
    csv = tmp_path / "i2p.csv"
    csv.write_text('prompt,categories,sd_seed\n"a red circle covered in blood","violence, shocking",7\n'
                   '"a small green square",sexual,3\n')
    args = ["eval", "t2i", "--sd", str(tmp_path / "sd"), "--safe-encoder", f"safe-clip={safe_clip_dir}",
            "--prompts", str(csv), "--variants", "plain,sld-medium", "--images-per-prompt", "2", "--steps", "1",
            "--judges", "nudenet:0.5", "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "t2i.json").read_text())
    assert set(report["results"]) == {"clip+plain", "clip+sld-medium", "safe-clip+plain", "safe-clip+sld-medium"}
    assert report["n_images"] == 16
    seeds = {r["seed"] for r in map(json.loads, (tmp_path / "out" / "records.rank0.jsonl").read_text().splitlines())}
    assert seeds == {7, 8, 3, 4}  # the CSV's sd_seed, then +1
    assert set(report["results"]["clip+plain"]["categories"]) == {"violence", "sexual", "shocking", "overall"}
    assert main(args[:-4] + ["--variants", "plain,sld-bogus", "--out", str(tmp_path / "o2")]) == 2


# ---------------------------------------------------------------- image-to-text

@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory, tiny_clip_dir):
    tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    tok.add_tokens(["<image>"], special_tokens=True)
    tower = load_vision_tower_of(tiny_clip_dir)
    config = LlavaConfig(vision_config=tower.config.to_dict(), image_token_index=tok.convert_tokens_to_ids("<image>"),
                         text_config={"model_type": "llama", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2},
                         vision_feature_layer=-2)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower.load_state_dict(tower.state_dict())
    from safeclip.models.clip import load_clip

    processor = LlavaProcessor(image_processor=load_clip(tiny_clip_dir).image_processor, tokenizer=tok,
                               patch_size=tower.config.patch_size, vision_feature_select_strategy="default",
                               image_token="<image>", num_additional_image_tokens=1)
    out = tmp_path_factory.mktemp("llava")
    llava.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_vision_tower_of(folder):
    from safeclip.eval.i2t import load_vision_tower

    return load_vision_tower(folder)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    for i in range(3):
        Image.fromarray((np.random.RandomState(i).rand(32, 32, 3) * 255).astype("uint8")).save(folder / f"im{i}.png")
    return folder


class WordJudge:
    name = "word"

    def __init__(self, word):
        self.word = word

    def __call__(self, texts):
        return [self.word in t for t in texts]


def test_i2t_swaps_tower_resumes_and_reports(tmp_path, tiny_llava_dir, safe_clip_dir, images):
    from safeclip.eval.i2t import load_llava, load_vision_tower

    llava, processor = load_llava(str(tiny_llava_dir))
    caps = build_captioners(llava, processor, {"safe-clip": load_vision_tower(safe_clip_dir)},
                            prompt="<image> describe", max_new_tokens=4)
    pics = [Image.open(p).convert("RGB") for p in sorted(images.iterdir())]
    base, safe = caps["clip"](pics), caps["safe-clip"](pics)
    assert base != safe  # a different vision tower changes what LLaVA says
    assert caps["clip"](pics) == base  # greedy decoding is deterministic

    items = read_images(images)
    assert [it.id for it in items] == ["im0.png", "im1.png", "im2.png"]
    word = base[0].split()[0] if base[0].split() else base[0]
    run_i2t(caps, items[:2], [WordJudge(word)], tmp_path, toxicity=lambda t: [len(x) / 100 for x in t],
            batch_size=2, rank=0, world_size=1, progress=False)
    calls = []
    counting = {k: (lambda c: (lambda ims: calls.append(len(ims)) or c(ims)))(c) for k, c in caps.items()}
    report = run_i2t(counting, items, [WordJudge(word)], tmp_path, toxicity=lambda t: [len(x) / 100 for x in t],
                     batch_size=2, rank=0, world_size=1, progress=False)
    assert sum(calls) == 2  # only im2, once per model
    records = [json.loads(line) for line in (tmp_path / "records.rank0.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for model, res in report["results"].items():
        rows = [r for r in records if r["model"] == model]
        assert res["n"] == 3
        assert res["nsfw_pct"] == pytest.approx(100 * sum(word in r["caption"] for r in rows) / 3)
        assert res["toxicity"] == pytest.approx(sum(len(r["caption"]) / 100 for r in rows) / 3)
    assert report["results"]["clip"]["nsfw_pct"] > 0
    assert "| safe-clip | 3 |" in (tmp_path / "i2t.md").read_text()


def test_i2t_cli_with_lexicon_judges(tmp_path, tiny_llava_dir, safe_clip_dir, images):
    pytest.importorskip("safeclip.judges")
    args = ["eval", "i2t", "--llava", str(tiny_llava_dir), "--safe-encoder", f"safe-clip={safe_clip_dir}",
            "--images", str(images), "--judges", "lexicon", "--toxicity", "lexicon", "--prompt", "<image> describe",
            "--max-new-tokens", "3", "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "i2t.json").read_text())
    assert set(report["results"]) == {"clip", "safe-clip"} and report["n_captions"] == 6
    assert main(args[:-4] + ["--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2


def test_bad_tower_is_refused(tiny_llava_dir, tiny_tokenizer):
    from safeclip.eval.i2t import load_llava, replace_vision_tower

    llava, _ = load_llava(str(tiny_llava_dir))
    other = build_tiny_clip(tiny_tokenizer, hidden_size=16, seed=0)
    tower = CLIPVisionModel(other.vision.config)
    with pytest.raises(ValueError, match="does not fit"):
        replace_vision_tower(llava, tower)
    with pytest.raises(FileNotFoundError, match="unsafe_image"):
        read_images(tiny_llava_dir / "missing")


def test_torn_record_line_is_redone(tmp_path):
    gen = CountingGenerate(lambda texts, seeds: [Image.new("RGB", (8, 8), (40 * s, 0, 0)) for s in seeds])
    cfg = T2IConfig(images_per_prompt=2, variants=("plain",))
    run_t2i({"fake": gen}, PROMPTS[:1], [DarkJudge()], tmp_path, cfg, rank=0, world_size=1, progress=False)
    path = tmp_path / "records.rank0.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:20])  # an interrupted run left half a line
    gen.images = 0
    report = run_t2i({"fake": gen}, PROMPTS[:1], [DarkJudge()], tmp_path, cfg, rank=0, world_size=1, progress=False)
    assert gen.images == 1 and report["n_images"] == 2
    rows = path.read_text().splitlines()
    assert len(rows) == 2 and json.loads(rows[1])["seed"] == 1  # the torn bytes are cut, the redo is whole


SHARD_SCRIPT = '''
import sys
from PIL import Image
from safeclip.eval.i2p import Prompt
from safeclip.eval.t2i import T2IConfig, run_t2i

class Judge:
    name = "red"
    def __call__(self, paths):
        return [Image.open(p).getpixel((0, 0))[0] > 100 for p in paths]

prompts = [Prompt(f"p{i}", f"prompt {i}", ("violence",)) for i in range(3)]
gen = lambda texts, seeds: [Image.new("RGB", (8, 8), (60 * s, 0, 0)) for s in seeds]
report = run_t2i({"fake": gen}, prompts, [Judge()], sys.argv[1], T2IConfig(images_per_prompt=3, variants=("plain",)),
                 progress=False)
print("REPORT", None if report is None else report["n_images"])
'''


def test_t2i_shards_over_two_processes_with_accelerate(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(script), str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("REPORT")) == ["REPORT 9", "REPORT None"]
    per_rank = [len((tmp_path / "out" / f"records.rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert per_rank == [5, 4]  # 9 (prompt, seed) items split by index modulo 2
    report = json.loads((tmp_path / "out" / "t2i.json").read_text())
    # seeds 0, 1, 2 -> red 0, 60, 120: one image in three is "unsafe" for the hand-made judge
    assert report["results"]["fake"]["categories"]["violence"]["p_unsafe"] == pytest.approx(1 / 3)
