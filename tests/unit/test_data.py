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


def test_a_jpeg_cut_mid_stream_is_caught_by_the_image_check(tmp_path):
    """Image.verify() passes a truncated JPEG; the check decodes fully, so --skip-bad-rows skips it up front."""
    path = write_quadruplets(tmp_path, 4)
    from PIL import Image

    jpeg = tmp_path / "images" / "cut.jpg"
    Image.effect_noise((64, 64), 80).convert("RGB").save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["safe_image"] = "images/cut.jpg"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, report = read_quadruplets(path, skip_bad_rows=True)
    assert [row for row, _ in report.skipped] == [3] and "cut.jpg is corrupt" in report.skipped[0][1]


def test_modalities_are_decided_from_all_rows(tmp_path):
    """A first row without its unsafe image no longer switches the whole set to text-only mode."""
    path = write_quadruplets(tmp_path, 4)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[0]["unsafe_image"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 1 \(id 0\): unsafe_image is empty"):
        read_quadruplets(path)
    records, report = read_quadruplets(path, skip_bad_rows=True)
    assert "unsafe_image" in report.modalities and report.rows == 3 and report.skipped[0][0] == 1
    for row in rows[1:3]:
        del row["unsafe_image"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # only the last row has one: not silently dropped
    with pytest.raises(DataError, match="only some rows have unsafe_image in 1 of 4 rows"):
        read_quadruplets(path)


def test_duplicate_keys_in_visu_json_are_refused(tmp_path):
    row = '{"coco_id": 1, "safe": "a dog", "nsfw": "a dog biting", "nsfw_im_path": "x.png", "tag": "violence"}'
    path = tmp_path / "visu.json"
    path.write_text('{"data": {"0": ' + row + ', "1": ' + row + ', "0": ' + row + '}}')
    with pytest.raises(DataError, match=r"visu.json: key '0' appears twice"):
        read_quadruplets(path)


def test_non_utf8_bytes_and_non_numeric_coco_ids_name_file_and_row(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"safe_text": "a cat", "unsafe_text": "x"}\n{"safe_text": "a \xff cat", "unsafe_text": "y"}\n')
    with pytest.raises(DataError, match=r"t.jsonl line 2 \(byte offset \d+\): byte 0xff is not UTF-8"):
        read_quadruplets(path)
    visu = tmp_path / "visu.json"
    visu.write_text(json.dumps({"0": {"coco_id": 5, "safe": "a", "nsfw": "b", "nsfw_im_path": "x.png", "tag": "t"},
                                "1": {"coco_id": "12a", "safe": "a", "nsfw": "b", "nsfw_im_path": "x.png", "tag": "t"}}))
    with pytest.raises(DataError, match=r"visu.json row 2: coco_id '12a' is not a number"):
        read_quadruplets(visu, fmt="visu")


def test_captions_are_capped_before_tokenising_and_the_cut_is_reported(tmp_path):
    from safeclip.data.quadruplets import MAX_TEXT_CHARS

    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"safe_text": "a red circle " * 100_000, "unsafe_text": "a red circle with blood"}) + "\n"
                    + json.dumps({"safe_text": "a blue square", "unsafe_text": "a blue square with blood"}) + "\n")
    records, report = read_quadruplets(path)
    assert len(records[0].safe_text) == MAX_TEXT_CHARS and records[1].safe_text == "a blue square"
    assert "1 captions longer than 4096 characters cut" in report.summary()


def write_visu_split(folder, rows: dict) -> "Path":
    """A ViSU JSON split as the authors ship it, with the COCO and generated images it names."""
    from PIL import Image

    (folder / "coco" / "train2017").mkdir(parents=True)
    (folder / "nsfw").mkdir()
    for key, row in rows.items():
        Image.new("RGB", (8, 8)).save(folder / "coco" / "train2017" / f"{row['coco_id']:012d}.jpg")
        Image.new("RGB", (8, 8)).save(folder / "nsfw" / row["nsfw_im_path"])
    path = folder / "train.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("config", ["vit-l-14_safe-clip.yaml", "vit-l-14-336_safe-clip.yaml", "vit-h-14_safe-clip.yaml",
                                    "vit-l-14_safe-clip-authors.yaml", "vit-l-14_hysac.yaml"])
def test_shipped_configs_skip_visus_empty_nsfw_row_and_name_it(tmp_path, config):
    """Issue 16.8: ViSU as downloaded holds id 109551 with an empty nsfw text; the shipped configs read past it."""
    from pathlib import Path

    from safeclip.config import load_config

    rows = {str(k): {"coco_id": k, "safe": f"a dog {k}", "nsfw": f"a dog {k} biting", "nsfw_im_path": f"{k}.png",
                     "tag": "violence"} for k in (109550, 109551, 109552)}
    rows["109551"]["nsfw"] = ""
    path = write_visu_split(tmp_path, rows)
    with pytest.raises(DataError, match="id 109551"):
        read_quadruplets(path, image_root=tmp_path / "coco", unsafe_image_root=tmp_path / "nsfw")
    data = load_config(Path(__file__).resolve().parents[2] / "configs" / config).data
    records, report = read_quadruplets(path, fmt=data.format, image_root=tmp_path / "coco",
                                       unsafe_image_root=tmp_path / "nsfw", skip_bad_rows=data.skip_bad_rows)
    assert [r.id for r in records] == ["109550", "109552"] and len(report.skipped) == 1
    assert "1 bad rows skipped (row 2: id 109551: unsafe_text is empty)" in report.summary()


def test_visu_text_incremental_id_is_the_record_id(tmp_path):
    path = tmp_path / "visu_text.jsonl"
    rows = [{"incremental_id": 0, "safe": "a man", "nsfw": "a man with a gun", "tag": "weapons"},
            {"incremental_id": 7, "safe": "a cat", "nsfw": "a cat with a gun", "tag": "weapons"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = read_quadruplets(path)
    assert [r.id for r in records] == ["0", "7"]
