"""The library leaves its caller's process alone: importing and loading keep the warnings filters, logger
levels, transformers' progress-bar setting and matplotlib's backend as the caller set them, and a clean run
prints no transformers notice about torchvision (the PIL image processor is chosen explicitly)."""

import json
import subprocess
import sys

CALLER = r'''
import json, logging, sys, warnings
# third-party libraries install their own warnings filters at import; the caller imports them first so that
# only what safeclip itself does shows up
import accelerate, datasets, diffusers, peft, torch, transformers, trl  # noqa: E401,F401
from transformers import CLIPModel  # noqa: F401
import matplotlib
matplotlib.use("svg")
warnings.simplefilter("default")
warnings.filterwarnings("error", message="caller's own filter")
logging.getLogger("transformers").setLevel(logging.INFO)
logging.getLogger("transformers.image_processing_utils").setLevel(logging.WARNING)
from transformers.utils import logging as hf_logging
hf_logging.disable_progress_bar()  # the caller's choice, which a load must not flip back on

def state():
    return {"filters": [repr(f) for f in warnings.filters], "backend": matplotlib.get_backend(),
            "levels": {n: logging.getLogger(n).level for n in ("transformers", "transformers.image_processing_utils")},
            "bars": hf_logging.is_progress_bar_enabled()}

before = state()
import safeclip.plots, safeclip.compare, safeclip.datagen.demo  # noqa: E401
from safeclip.models.clip import build_tiny_clip, load_clip
from safeclip.models.lora import save_merged_clip
from safeclip.models.tokenizer import train_clip_tokenizer
from safeclip.plots import plot_training_curves
folder = sys.argv[1]
tokenizer = train_clip_tokenizer(["a red circle on a blue square"] * 4, vocab_size=300, model_max_length=16)
save_merged_clip(build_tiny_clip(tokenizer, seed=0), folder)
bundle = load_clip(folder)
plot_training_curves(folder, folder + "/curves.png")
print(json.dumps({"before": before, "after": state(), "processor": type(bundle.image_processor).__name__}))
'''


def test_import_and_load_leave_the_callers_settings_unchanged(tmp_path):
    result = subprocess.run([sys.executable, "-c", CALLER, str(tmp_path / "clip")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["after"] == report["before"]
    assert report["before"]["backend"] == "svg" and report["before"]["bars"] is False
    assert report["processor"] == "CLIPImageProcessorPil"
    assert "requires torchvision" not in result.stderr
    assert (tmp_path / "clip" / "curves.png").stat().st_size > 0


def test_a_clean_command_prints_no_torchvision_notice(tmp_path):
    """Build, pretrain and a LoRA training run (peft wraps the encoders): no notice, no warning."""
    world, base = tmp_path / "world", tmp_path / "base"
    sizes = ["--n-train", "16", "--n-val", "4", "--n-test", "4", "--n-found", "2", "--n-distractors", "2"]
    for argv in (["world", "build", "--out", str(world), *sizes],
                 ["world", "pretrain", "--world", str(world), "--out", str(base), "--epochs", "1", "--batch-size", "8",
                  "--hidden-size", "16", "--num-layers", "1"],
                 ["train", f"model.name={base}", f"data.train={world / 'train.jsonl'}", "data.val=", "data.batch_size=8",
                  "optim.epochs=1", "lora.r=2", "run.progress=false", f"run.out_dir={tmp_path / 'run'}"]):
        result = subprocess.run([sys.executable, "-m", "safeclip.cli", *argv], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "requires torchvision" not in result.stderr and "Warning" not in result.stderr, result.stderr
