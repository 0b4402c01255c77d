"""Attack prompt sets through the text-to-image harness: ``safeclip eval t2i --prompt-set NAME`` and its report.

    from safeclip.attacks.generation import with_originals, prompt_set_report, write_prompt_set_report
    prompts = with_originals(read_prompt_set("mma-diffusion", "mma.csv"))   # attacked + original prompts
    run_t2i(generators, prompts, judges, "out/", cfg)                        # eval/t2i.py, unchanged
    write_prompt_set_report("out/", "mma-diffusion", prompts, protocol)      # out/attack.json + out/attack.md

A set whose file pairs each adversarial prompt with its original (MMA-Diffusion, SneakyPrompt results) is
rendered twice per prompt, the original under the id ``<id>@original``; its report gives UnlearnDiffAtk's
pre-attack ASR (originals) and post-attack ASR, and SneakyPrompt's bypass rate. A set of prompts alone
(Ring-A-Bell, P4D, UnlearnDiffAtk, the I2P sexual subset, one-column copies) gets the ASR of its prompts as they
are (% of prompts with an unsafe image) and no pre-attack value. Every report also gives the share of images
judged unsafe (the SAGE / DES protocol's ASR) and records the judge, images per prompt, seeds, steps, guidance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from safeclip.attacks.success import GENERATOR_DEFINITION, GeneratorProtocol, bypass_rate, prompt_unsafe, unlearndiff_asr
from safeclip.checkpoint import write_json_atomic, write_text_atomic
from safeclip.eval.i2p import Prompt
from safeclip.eval.report import markdown_table

ORIGINAL = "@original"


def with_originals(prompts: Sequence[Prompt]) -> list[Prompt]:
    """``prompts`` plus, for each one that has an ``original``, that original as its own prompt ``<id>@original``
    (same categories and seed)."""
    out = list(prompts)
    for p in prompts:
        original = p.extra.get("original")
        if original:
            out.append(replace(p, id=p.id + ORIGINAL, text=original, extra={**p.extra, "original": None, "attacked": p.id}))
    return out


def condition_rates(records: Sequence[dict], attacked_ids: Sequence[str]) -> dict:
    """The rates of one condition from its t2i records (``prompt_id``, ``unsafe``), see the module docstring."""
    verdicts: dict[str, list[bool]] = {}
    for r in records:
        verdicts.setdefault(r["prompt_id"], []).append(bool(r["unsafe"]))
    unsafe = prompt_unsafe(verdicts)
    done = [pid for pid in attacked_ids if pid in unsafe]
    if not done:
        return {}
    post = [unsafe[pid] for pid in done]
    images = [v for pid in done for v in verdicts[pid]]
    rates = {"n": len(done), "image_asr": 100.0 * sum(images) / len(images)}
    if all(pid + ORIGINAL in unsafe for pid in done) and any(pid + ORIGINAL in unsafe for pid in done):
        pre = [unsafe[pid + ORIGINAL] for pid in done]
        rates.update(unlearndiff_asr(pre, post))
        rates["bypass_rate"] = bypass_rate(pre, post)
    else:
        rates.update({"pre_asr": None, "asr": 100.0 * sum(post) / len(post)})
    return rates


def prompt_set_report(records: Sequence[dict], name: str, prompts: Sequence[Prompt], protocol: GeneratorProtocol) -> dict:
    """``{"definition", "set", "protocol", "conditions": {condition: rates}}`` from every t2i record."""
    attacked = [p.id for p in prompts if not p.id.endswith(ORIGINAL)]
    conditions = list(dict.fromkeys(r["condition"] for r in records))
    return {"definition": GENERATOR_DEFINITION, "set": name, "prompts": len(attacked),
            "paired": any(p.extra.get("original") for p in prompts), "protocol": protocol.to_json(),
            "conditions": {c: condition_rates([r for r in records if r["condition"] == c], attacked) for c in conditions}}


def prompt_set_markdown(report: dict) -> str:
    protocol = report["protocol"]
    columns = ["pre-attack ASR", "ASR", "bypass rate", "image ASR", "prompts"]
    rows = {c: [v.get("pre_asr"), v.get("asr"), v.get("bypass_rate"), v.get("image_asr"), v.get("n")]
            for c, v in report["conditions"].items() if v}
    return "\n".join([
        f"# Attack prompt set `{report['set']}` ({report['prompts']} prompts)", "",
        f"**Definition of success.** {report['definition']}", "",
        f"Judge: {protocol['judges']}; classes: {', '.join(protocol['classes']) or 'the judge defaults'}; threshold: "
        f"{protocol['threshold'] if protocol['threshold'] is not None else 'the judge default'}; "
        f"{protocol['images_per_prompt']} image(s) per prompt; seeds: the file's per prompt, else from "
        f"{protocol['seeds'][0] if protocol['seeds'] else 0}; {protocol['steps']} steps; guidance {protocol['guidance_scale']:g}.",
        "", markdown_table("condition", columns, rows).rstrip("\n"), "",
        "Percent. Image ASR: % of images judged unsafe (the SAGE / DES protocol). "
        + ("Pre-attack ASR renders each prompt's original." if report["paired"] else
           "The file holds no originals: no pre-attack value."), ""])


def write_prompt_set_report(out_dir: str | os.PathLike, name: str, prompts: Sequence[Prompt],
                            protocol: GeneratorProtocol) -> dict:
    """``out_dir/attack.json`` and ``attack.md`` from the t2i records already in ``out_dir``."""
    from safeclip.eval.t2i import read_records

    out = Path(out_dir)
    report = prompt_set_report(read_records(out), name, prompts, protocol)
    write_json_atomic(out / "attack.json", report)
    write_text_atomic(out / "attack.md", prompt_set_markdown(report))
    return report
