"""`safeclip eval retrieval` through the CLI on a base model and a trained run folder."""

import json

import pytest

from safeclip.cli import main
from tests.fixtures import write_quadruplets


def test_eval_retrieval_writes_protocol_json_and_table(tmp_path, tiny_clip_dir):
    data = write_quadruplets(tmp_path / "d", 12)
    run = tmp_path / "run"
    assert main(["train", f"model.name={tiny_clip_dir}", f"data.train={data}", "data.batch_size=4", "optim.epochs=1",
                 "lora.r=2", f"run.out_dir={run}", "run.progress=false"]) == 0
    assert main(["eval", "retrieval", "--data", str(data), "--model", f"base={tiny_clip_dir}",
                 "--model", f"safe-clip={run}", "--out", str(tmp_path / "res")]) == 0
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert results["protocol"] == "safe-clip" and set(results["models"]) == {"base", "safe-clip"}
    entry = results["models"]["safe-clip"]
    assert set(entry) == {"T->V", "V->T", "T*->V+V*", "V*->T+T*"}
    assert set(entry["T*->V+V*"]) == {"R@1", "R@5", "R@10", "R@20", "NSFW@1"}
    assert entry["T->V"]["R@20"] == 100.0  # 12 items: every target is within the top 20
    assert "| safe-clip |" in (tmp_path / "res" / "results.md").read_text()
    assert results["models"]["base"] != results["models"]["safe-clip"]


def test_eval_reports_missing_data_file(tmp_path, tiny_clip_dir, capsys):
    code = main(["eval", "retrieval", "--data", str(tmp_path / "none.jsonl"), "--model", str(tiny_clip_dir), "--out", str(tmp_path)])
    assert code == 2 and "none.jsonl does not exist" in capsys.readouterr().err


def _nsfwcaps(tmp_path, n=10):
    """NSFWCaps-shaped rows whose images were 'fetched' into tmp_path/nocaps under their URL file names."""
    data = write_quadruplets(tmp_path / "d", n)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    (tmp_path / "nocaps").mkdir()
    caps = []
    for r in rows:
        name = f"{r['id']}.jpg"
        (tmp_path / "d" / r["safe_image"]).rename(tmp_path / "nocaps" / name)
        caps.append({"image_coco_url": f"https://example.org/nocaps/val/{name}", "caption": r["safe_text"],
                     "nsfw_caption": r["unsafe_text"], "chosen_category": r["category"]})
    path = tmp_path / "nsfwcaps.json"
    path.write_text(json.dumps(caps))
    return path, rows


def test_eval_safer_t2v_on_nsfwcaps_rows(tmp_path, tiny_clip_dir):
    import torch

    from safeclip.data import read_quadruplets
    from safeclip.eval.embed import embed_quadruplets
    from safeclip.eval.safer_protocol import safer_t2v
    from safeclip.models.clip import load_clip

    path, rows = _nsfwcaps(tmp_path)
    records, report = read_quadruplets(path, image_root=tmp_path / "nocaps")
    assert report.modalities == ("safe_text", "unsafe_text", "safe_image")
    assert [r.unsafe_text for r in records] == [r["unsafe_text"] for r in rows]
    assert records[3].safe_image == tmp_path / "nocaps" / "3.jpg" and records[3].category == rows[3]["category"]

    assert main(["eval", "safer-t2v", "--data", str(path), "--image-root", str(tmp_path / "nocaps"),
                 "--model", f"base={tiny_clip_dir}", "--out", str(tmp_path / "res")]) == 0
    out = json.loads((tmp_path / "res" / "safer_t2v.json").read_text())
    assert out["protocol"].startswith("safer-clip T*->V") and out["n"] == 10
    bundle = load_clip(tiny_clip_dir)
    emb = embed_quadruplets(bundle.text, bundle.vision, bundle.tokenizer, bundle.image_processor, records)
    expected = safer_t2v(emb["unsafe_text"], emb["safe_image"])
    assert out["models"]["base"] == {k: torch.tensor(v).item() for k, v in expected.items()}
    assert "| base |" in (tmp_path / "res" / "safer_t2v.md").read_text()


def test_eval_safer_t2v_names_unfetched_images(tmp_path, tiny_clip_dir, capsys):
    path, _ = _nsfwcaps(tmp_path, n=4)
    code = main(["eval", "safer-t2v", "--data", str(path), "--image-root", str(tmp_path / "elsewhere"),
                 "--model", str(tiny_clip_dir), "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert code == 2 and "elsewhere" in err and "does not exist" in err


def test_a_run_trained_on_a_relative_model_path_evaluates_from_anywhere_and_n_is_recorded(tmp_path, tiny_clip_dir,
                                                                                          monkeypatch, capsys):
    import shutil

    shutil.copytree(tiny_clip_dir, tmp_path / "base")
    data = write_quadruplets(tmp_path / "d", 12)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "model.name=base", f"data.train={data}", "data.batch_size=4", "optim.epochs=1", "lora.r=2",
                 "run.out_dir=run", "run.progress=false"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # 'base' means nothing here
    capsys.readouterr()
    assert main(["eval", "retrieval", "--data", str(data), "--model", f"safe-clip={tmp_path / 'run'}",
                 "--out", str(tmp_path / "res")]) == 0
    assert json.loads((tmp_path / "res" / "results.json").read_text())["rows"] == 12
    assert "warning: only 12 test rows" in capsys.readouterr().err


def test_adapter_labels_must_name_a_model_and_model_labels_are_unique(tmp_path, tiny_clip_dir, capsys):
    data = write_quadruplets(tmp_path / "d", 4)
    common = ["eval", "retrieval", "--data", str(data), "--out", str(tmp_path / "res")]
    assert main([*common, "--model", f"base={tiny_clip_dir}", "--adapters", f"safe={tmp_path}"]) == 2
    assert "--adapters label(s) safe match no --model (labels: base)" in capsys.readouterr().err
    assert main([*common, "--model", f"a={tiny_clip_dir}", "--model", f"a={tiny_clip_dir}"]) == 2
    assert "--model label(s) a given more than once" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_a_tokenizer_larger_than_the_vocabulary_is_named(tmp_path, tiny_clip_dir):
    import shutil

    from transformers import CLIPTokenizer

    from safeclip.models.clip import ClipLoadError, load_clip

    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    size = len(tokenizer)
    tokenizer.add_tokens([f"extra{i}" for i in range(20)])  # tokenizer files of another model
    tokenizer.save_pretrained(folder)
    with pytest.raises(ClipLoadError, match=f"has {size + 20} tokens but the text encoder embeds only {size}"):
        load_clip(folder)


def write_found_images(folder) -> list[dict]:
    """Unsafe image folders named as the paper's sources and a distractor JSONL (its rows are returned)."""
    from tests.fixtures import draw

    for k, source in enumerate(("nudenet", "nsfw_urls", "smid")):
        (folder / source).mkdir()
        for j in range(3):
            draw(["red", "blue", "green"][j], ["circle", "square", "triangle"][k], True).save(folder / source / f"{j}.png")
    (folder / "laion").mkdir()
    rows = []
    for j, colour in enumerate(["white", "black", "yellow", "blue"]):
        draw(colour, "star", False).save(folder / "laion" / f"{j}.png")
        rows.append({"safe_image": f"laion/{j}.png", "safe_text": f"a {colour} star"})
    (folder / "distractors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_nsfw_retrieval_reads_visu_test_json_as_downloaded(tmp_path, tiny_clip_dir, capsys):
    """Issue 16.8: the README's Table 3 command queries with visu/test.json itself: no COCO or generated images
    beside it (only texts are used) and the row with an empty nsfw text (id 109551) is skipped and named."""
    write_found_images(tmp_path)
    rows = {str(k): {"coco_id": k, "safe": f"a man {k}", "nsfw": f"a man {k} with a gun", "nsfw_im_path": f"{k}.png",
                     "tag": tag} for k, tag in ((109550, "violence"), (109551, "violence"), (109552, "weapons"))}
    rows["109551"]["nsfw"] = ""
    queries = tmp_path / "visu" / "test.json"
    queries.parent.mkdir()
    queries.write_text(json.dumps(rows))
    assert main(["eval", "nsfw-retrieval", "--queries", str(queries), "--unsafe", str(tmp_path / "smid"),
                 "--distractors", str(tmp_path / "distractors.jsonl"), "--model", f"clip={tiny_clip_dir}",
                 "--out", str(tmp_path / "res")]) == 0
    assert "2 query texts; 1 bad rows skipped (row 2: id 109551: unsafe_text is empty)" in capsys.readouterr().out
    result = json.loads((tmp_path / "res" / "nsfw_retrieval.json").read_text())
    assert result["queries"]["smid"]["ids"] == ["109550", "109552"]


def test_nsfw_retrieval_queries_each_source_with_its_categories(tmp_path, tiny_clip_dir):
    """Issue 16.6 (paper Table 3): ViSU-Text-shaped queries; sources named as the paper's; the output records the texts."""
    from PIL import Image

    from safeclip.eval.nsfw_retrieval import unsafe_top1_rate
    from safeclip.models.clip import encode_images, encode_texts, load_clip

    tags = ["sexual", "nudity", "violence", "blood", "sexual", "drug use"]
    queries = tmp_path / "visu_text_test.jsonl"
    queries.write_text("".join(json.dumps({"incremental_id": 100 + i, "safe": f"a red circle {i}",
                                           "nsfw": f"a red circle {i} {tag}", "tag": tag}) + "\n"
                               for i, tag in enumerate(tags)))
    rows = write_found_images(tmp_path)
    assert main(["eval", "nsfw-retrieval", "--queries", str(queries), "--unsafe", str(tmp_path / "nudenet"),
                 "--unsafe", str(tmp_path / "nsfw_urls"), "--unsafe", str(tmp_path / "smid"),
                 "--distractors", str(tmp_path / "distractors.jsonl"), "--model", f"clip={tiny_clip_dir}",
                 "--out", str(tmp_path / "res")]) == 0
    result = json.loads((tmp_path / "res" / "nsfw_retrieval.json").read_text())
    assert result["queries"]["nudenet"]["ids"] == ["100", "101", "104"] == result["queries"]["nsfw_urls"]["ids"]
    assert result["queries"]["smid"]["ids"] == ["102", "103", "105"]
    assert result["queries"]["smid"]["texts"][0] == "a red circle 2 violence"
    # the SMID column is the rate of its own texts, not of every text
    clip = load_clip(tiny_clip_dir)
    texts = encode_texts(clip.text, clip.tokenizer, result["queries"]["smid"]["texts"])
    smid = encode_images(clip.vision, clip.image_processor, [Image.open(tmp_path / "smid" / f"{j}.png") for j in range(3)])
    safe = encode_images(clip.vision, clip.image_processor, [Image.open(tmp_path / "laion" / f"{j}.png") for j in range(4)])
    safe_texts = encode_texts(clip.text, clip.tokenizer, [r["safe_text"] for r in rows])
    models = result["models"]["clip"]
    assert models["T2I"]["smid"] == unsafe_top1_rate(texts, smid, safe)
    assert models["I2T"]["smid"] == unsafe_top1_rate(smid, texts, safe_texts)
    assert "nudenet: 3 texts (nudity, sexual)" in (tmp_path / "res" / "nsfw_retrieval.md").read_text()
