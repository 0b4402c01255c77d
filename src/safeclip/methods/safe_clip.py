"""``safe-clip`` behind the methods interface: the paper's fine-tuning (``safeclip.train``) with a recipe.

    from safeclip.methods import MethodInputs, get_method
    bundle = get_method("safe-clip")(MethodInputs(base="demo/base", train="w/train.jsonl", val="w/val.jsonl",
                                                  out_dir="compare/methods/safe-clip"))

The recipe is ``recipes/demo.yaml`` (the settings measured on the offline world); ``inputs.overrides``
are dotted config overrides on top (e.g. ``loss.temperature=0.01``), and an override ``config=PATH``
replaces the recipe (real backbones: ``config=configs/vit-l-14_safe-clip.yaml``). The budget's epochs,
batch size and row limit are applied after the recipe and before the other overrides. The run folder is ``out_dir/run`` (resumable, reused
once ``summary.json`` exists); the result is the base model with the best LoRA adapters applied.
"""

from __future__ import annotations

from safeclip.config import load_config
from safeclip.methods.base import MethodInputs
from safeclip.models.clip import ClipBundle
from safeclip.models.resolve import resolve_model


def run_safe_clip(inputs: MethodInputs) -> ClipBundle:
    from safeclip.demo import demo_config_path
    from safeclip.train import train

    run_dir = inputs.out / "run"
    if not (run_dir / "summary.json").is_file():
        budget = inputs.budget
        overrides = [f"model.name={inputs.base}", f"data.train={inputs.train}", f"run.out_dir={run_dir}",
                     f"run.seed={inputs.seed}", f"run.progress={str(inputs.progress).lower()}",
                     f"run.resume={str((run_dir / 'checkpoints').exists()).lower()}",
                     f"optim.epochs={budget.epochs}", f"data.batch_size={budget.batch_size}",
                     f"data.max_rows={budget.max_rows}"]
        if inputs.val:
            overrides.append(f"data.val={inputs.val}")
        recipe = demo_config_path()
        rest = []
        for item in inputs.overrides:
            if item.startswith("config="):
                recipe = item.split("=", 1)[1]
            else:
                rest.append(item)
        train(load_config(recipe, overrides + rest))
    return resolve_model(run_dir)
