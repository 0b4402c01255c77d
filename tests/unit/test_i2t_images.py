"""Which images `safeclip eval i2t --images` describes: folders, tables and the authors' ViSU JSON."""

import json

import pytest
from PIL import Image

from safeclip.eval.i2t import read_images


def _visu(tmp_path, rows):
    path = tmp_path / "visu_test.json"
    path.write_text(json.dumps({str(k): {"coco_id": 100 + k, "safe": f"safe {k}", "nsfw": f"unsafe {k}",
                                         "nsfw_im_path": p, "tag": "violence"} for k, p in rows.items()}))
    return path


def test_visu_json_gives_its_unsafe_images_without_coco(tmp_path):
    nsfw = tmp_path / "nsfw"
    nsfw.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(nsfw / name)
    path = _visu(tmp_path, {7: "a.png", 9: "b.png"})
    items = read_images(path, unsafe_image_root=nsfw)
    assert [(it.id, it.path.name) for it in items] == [("7", "a.png"), ("9", "b.png")]
    assert [it.id for it in read_images(path, unsafe_image_root=nsfw, max_images=1)] == ["7"]


def test_visu_json_with_missing_images_names_the_root_option(tmp_path):
    path = _visu(tmp_path, {1: "gone.png"})
    with pytest.raises(FileNotFoundError, match="--unsafe-image-root"):
        read_images(path)


def test_table_without_image_column_is_refused(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"safe_text": "x"}) + "\n")
    with pytest.raises(ValueError, match="unsafe_image"):
        read_images(path)
