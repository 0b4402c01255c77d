"""Model card (``README.md``) for an export folder: base, data, method, measured numbers, limits, how to load.

    safeclip export --model runs/vit-l-14 --out export/ --targets hf,diffusers,llava,openclip,card \\
        --results results/retrieval/results.json

Numbers are read from the results files given (``eval retrieval`` results.json, ``eval nsfw-retrieval``
nsfw_retrieval.json, ``eval t2i`` t2i.json, ``eval i2t`` i2t.json); nothing is claimed that was not measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from safeclip.checkpoint import write_text_atomic
from safeclip.errors import MissingFileError

LOADING = {
    "hf": "```python\nfrom transformers import CLIPModel, CLIPProcessor\nmodel = CLIPModel.from_pretrained(\"{root}/hf\")\n"
          "processor = CLIPProcessor.from_pretrained(\"{root}/hf\")\n```",
    "adapters": "```python\nfrom safeclip.models.clip import load_clip\nfrom safeclip.models.lora import apply_adapters\n"
                "bundle = apply_adapters(load_clip(\"{base}\"), \"{root}/adapters\")  # remove them to get the base back\n```",
    "diffusers": "```python\nfrom diffusers import StableDiffusionPipeline\nfrom transformers import CLIPTextModel\n"
                 "pipe = StableDiffusionPipeline.from_pretrained(\"CompVis/stable-diffusion-v1-4\",\n"
                 "    text_encoder=CLIPTextModel.from_pretrained(\"{root}/diffusers/text_encoder\"))\n```",
    "llava": "```python\nfrom transformers import CLIPVisionModel, LlavaForConditionalGeneration\n"
             "llava = LlavaForConditionalGeneration.from_pretrained(\"llava-hf/llava-1.5-7b-hf\")\n"
             "tower = CLIPVisionModel.from_pretrained(\"{root}/llava/vision_tower\")\n"
             "llava.model.vision_tower.load_state_dict(tower.state_dict())  # same CLIP size as LLaVA's tower\n```\n"
             "(`safeclip.eval.i2t.replace_vision_tower` checks the shapes.)",
    "openclip": "```python\nimport open_clip  # QuickGELU: use the -quickgelu config or force_quick_gelu=True\n"
                "model, _, preprocess = open_clip.create_model_and_transforms(\n"
                "    \"ViT-L-14-quickgelu\", pretrained=\"{root}/openclip/open_clip_model.safetensors\")\n```\n"
                "OpenAI CLIP, and so Safe-CLIP, uses QuickGELU; open_clip's plain `ViT-L-14` config uses GELU and gives "
                "worse embeddings without any error. For other sizes register `openclip/safeclip.json` with "
                "`open_clip.add_model_config`.",
}


def _results_lines(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    protocol = data.get("protocol", path.stem)
    lines = [f"From `{path}` (protocol: {protocol}):", ""]
    if "models" in data:  # eval retrieval
        for label, res in data["models"].items():
            flat = {k: v for k, v in res.items() if isinstance(v, (int, float))}
            nested = {f"{k}.{kk}": vv for k, v in res.items() if isinstance(v, dict) for kk, vv in v.items()
                      if isinstance(vv, (int, float))}
            items = {**flat, **nested}
            lines.append(f"- **{label}**: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in list(items.items())[:32]))
    elif protocol == "safe-clip-t2i":
        for cond, res in data["results"].items():
            lines.append(f"- **{cond}**: P(unsafe) overall {100 * res['categories']['overall']['p_unsafe']:.1f}% "
                         f"({res['categories']['overall']['n']} images)")
    elif protocol == "safe-clip-i2t":
        for model, res in data["results"].items():
            tox = "" if res.get("toxicity") is None else f", toxicity {res['toxicity']:.3f}"
            lines.append(f"- **{model}**: {res['nsfw_pct']:.1f}% NSFW captions ({res['n']}){tox}")
    else:
        lines += ["```json", json.dumps(data, indent=1)[:3000], "```"]
    return lines + [""]


def write_model_card(out: str | os.PathLike, *, base: str, targets: Sequence[str], data: str = "",
                     method: str = "", results: Sequence[str | os.PathLike] = (), name: str = "Safe-CLIP",
                     root: str | os.PathLike | None = None) -> Path:
    """Write ``out/README.md`` and return its path. ``results``: results JSON files to quote (must exist);
    ``root``: the export folder the loading snippets point into (default: ``out``)."""
    out = Path(out)
    root = Path(root if root is not None else out).as_posix()
    paths = [Path(r) for r in results]
    for p in paths:
        if not p.is_file():
            raise MissingFileError(f"results file {p} not found (give a results.json written by `safeclip eval ...`)")
    lines = [f"# {name}", "",
             "A CLIP model made safe with the Safe-CLIP recipe (Poppi et al., ECCV 2024): NSFW text and images "
             "are mapped next to their safe counterparts while safe inputs keep their embeddings.", "",
             "## Base model", "", f"`{base}`", "",
             "## Training data", "", data or "Not recorded: state the quadruplet dataset (e.g. ViSU) here.", "",
             "## Method", "",
             method or ("LoRA fine-tuning of both CLIP encoders against a frozen copy of the base with the Safe-CLIP "
                        "losses (redirection of unsafe inputs to safe targets, preservation of safe inputs); "
                        "adapters merged into the weights for export."), "",
             "## Measured results", ""]
    if paths:
        for p in paths:
            lines += _results_lines(p)
    else:
        lines += ["No results files were given to the export (`--results`); this card claims no numbers.", ""]
    lines += ["## Limits", "",
              "- Safety fine-tuning costs general ability: zero-shot accuracy drops noticeably against the base "
              "(published: 74.3 -> 52.2 average over 11 datasets for ViT-L/14). Measure it for your use.",
              "- It reduces, not removes, NSFW retrieval and generation; adversarial prompts (e.g. MMA-Diffusion, "
              "Ring-A-Bell) still succeed part of the time. Keep other safeguards in place.",
              "- The notion of unsafe is the training data's (ViSU: 20 categories); other categories are not covered.",
              "- Only the CLIP encoders change: a generator's own weights can still produce unsafe content.", "",
              "## How to load", ""]
    for target in targets:
        if target in LOADING:
            lines += [f"### {target}", "", LOADING[target].replace("{root}", root).replace("{base}", base), ""]
    return write_text_atomic(out / "README.md", "\n".join(lines))
