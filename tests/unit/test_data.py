"""Quadruplet readers: formats, modes, and clear errors for bad input."""

import csv
import json

import pytest

from safeclip.data import DataError, QuadrupletCollator, QuadrupletDataset, read_quadruplets
from tests.fixtures import write_quadruplets


def test_table_jsonl_reads_all_modalities(tmp_path):
    path = write_quadruplets(tmp_path, 5)
    records, report = read_quadruplets(path)
    assert report.rows == 5 and not report.skipped
    assert report.modalities == ("safe_text", "unsafe_text", "safe_image", "unsafe_image")
    assert records[0].safe_image.is_file()


def test_csv_without_images_is_text_only(tmp_path):
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["safe_text", "unsafe_text", "category"])
        w.writeheader()
        w.writerow({"safe_text": "a cat", "unsafe_text": "a cat with a knife", "category": "violence"})
    records, report = read_quadruplets(path)
    assert report.text_only and report.missing() == ["safe_image", "unsafe_image"]


def test_visu_json_schema_resolves_coco_and_unsafe_images(tmp_path):
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    (tmp_path / "nsfw").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "coco" / "val2017" / "000000000042.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "nsfw" / "x.png")
    data = {"info": {}, "data": {"0": {"coco_id": 42, "safe": "a dog", "nsfw": "a dog biting", "nsfw_im_path": "x.png", "tag": "violence"}}}
    path = tmp_path / "visu.json"
    path.write_text(json.dumps(data))
    records, report = read_quadruplets(path, image_root=tmp_path / "coco", unsafe_image_root=tmp_path / "nsfw")
    assert records[0].safe_image.name == "000000000042.jpg" and records[0].category == "violence"
    assert report.missing() == []


def test_visu_text_rows_have_no_unsafe_images(tmp_path):
    path = tmp_path / "visu_text.jsonl"
    path.write_text(json.dumps({"id": 1, "safe": "a man", "nsfw": "a man with a gun", "tag": "weapons"}) + "\n")
    records, report = read_quadruplets(path)
    assert records[0].unsafe_text == "a man with a gun" and report.text_only


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"caption": "x"}) + "\n")
    with pytest.raises(DataError, match="safe_text"):
        read_quadruplets(path, fmt="table")


def test_missing_image_names_file_and_row_then_skip_counts(tmp_path):
    path = write_quadruplets(tmp_path, 4)
    (tmp_path / "images" / "data.jsonl-2-unsafe.png").unlink()
    with pytest.raises(DataError, match=r"row 3 .*data.jsonl-2-unsafe.png"):
        read_quadruplets(path)
    records, report = read_quadruplets(path, skip_bad_rows=True)
    assert report.rows == 3 and len(report.skipped) == 1 and report.skipped[0][0] == 3
    assert "1 bad rows skipped" in report.summary()


def test_corrupt_image_is_skipped_with_verification_or_named_on_load(tmp_path, tiny_clip):
    path = write_quadruplets(tmp_path, 3)
    (tmp_path / "images" / "data.jsonl-1-safe.png").write_bytes(b"not a png")
    records, report = read_quadruplets(path, skip_bad_rows=True)
    assert len(report.skipped) == 1 and "corrupt" in report.skipped[0][1]
    records, _ = read_quadruplets(path)  # existence-only check passes; loading names the file
    dataset = QuadrupletDataset(records, tiny_clip.image_processor, ("safe_text", "safe_image"))
    with pytest.raises(DataError, match="data.jsonl-1-safe.png.*row 2"):
        dataset[1]


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_quadruplets(tmp_path / "nope.jsonl")


def test_collator_shares_padding_between_safe_and_unsafe(tmp_path, tiny_clip):
    path = write_quadruplets(tmp_path, 4)
    records, report = read_quadruplets(path)
    dataset = QuadrupletDataset(records, tiny_clip.image_processor, report.modalities)
    batch = QuadrupletCollator(tiny_clip.tokenizer)([dataset[i] for i in range(4)])
    assert batch["safe_input_ids"].shape == batch["unsafe_input_ids"].shape
    assert batch["safe_pixels"].shape == (4, 3, 32, 32)
    assert batch["unsafe_attention_mask"].sum() > batch["safe_attention_mask"].sum()
