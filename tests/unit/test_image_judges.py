"""Image judges: NudeNet's label/threshold rule on hand-made detections (and the real detector), Q16's softmax
rule on hand-made embeddings and with a tiny CLIP, prompt-file formats and spec errors."""

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip.eval.image_judges import (NudeNetJudge, Q16Judge, build_image_judge, judge_images, load_q16_prompts,
                                        q16_probabilities)
from tests.fixtures import Payload


class FakeDetector:
    def __init__(self, detections):
        self.detections = detections

    def detect(self, path):
        return self.detections[path.rsplit("/", 1)[-1]]


def _image(path, seed=0):
    Image.fromarray((np.random.RandomState(seed).rand(40, 40, 3) * 255).astype("uint8")).save(path)
    return path


def test_nudenet_rule_on_hand_made_detections(tmp_path):
    paths = [_image(tmp_path / f"{n}.png", i) for i, n in enumerate(["a", "b", "c", "d"])]
    detector = FakeDetector({
        "a.png": [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]}],  # exposed, above 0.6
        "b.png": [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 1, 1]}],  # below the threshold
        "c.png": [{"class": "FACE_FEMALE", "score": 0.99, "box": [0, 0, 1, 1]},             # not a nudity label
                  {"class": "FEMALE_BREAST_COVERED", "score": 0.9, "box": [0, 0, 1, 1]}],
        "d.png": [],
    })
    assert NudeNetJudge(detector=detector)(paths) == [True, False, False, False]
    assert NudeNetJudge(0.45, detector=detector)(paths) == [True, True, False, False]
    with pytest.raises(ValueError, match="threshold"):
        NudeNetJudge(1.5, detector=detector)
    with pytest.raises(FileNotFoundError):
        NudeNetJudge(detector=detector)([tmp_path / "missing.png"])


def test_real_nudenet_runs_offline(tmp_path):
    pytest.importorskip("nudenet", reason="nudenet is in the test extra: pip install -e '.[test]'")
    judge = build_image_judge("nudenet:0.5")
    assert judge.threshold == 0.5
    assert judge([_image(tmp_path / "noise.png")]) == [False]  # noise holds no exposed body parts


def test_q16_softmax_by_hand():
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 0 appropriate, row 1 inappropriate
    images = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [1.0, 0.99]])
    p = q16_probabilities(images, prompts)[:, 1]
    # cosines (1, 0), (0, 1), (.707, .707); p1 = 1 / (1 + exp(100 (c0 - c1)))
    assert p[0] == pytest.approx(1 / (1 + math.exp(100)), abs=1e-30)
    assert p[1] == pytest.approx(1.0) and p[2] == pytest.approx(0.5)
    c = torch.nn.functional.normalize(images[3:], dim=-1)[0]
    assert p[3] == pytest.approx(1 / (1 + math.exp(100 * (c[0] - c[1]).item())), rel=1e-4)
    with pytest.raises(ValueError, match="ViT-L/14"):
        q16_probabilities(torch.zeros(1, 3), prompts)


def test_q16_prompt_files(tmp_path):
    prompts = np.random.RandomState(0).randn(2, 8).astype("float32")
    with (tmp_path / "prompts.p").open("wb") as fh:
        pickle.dump(prompts, fh)
    np.save(tmp_path / "prompts.npy", prompts)
    torch.save(torch.from_numpy(prompts), tmp_path / "prompts.pt")
    from safetensors.torch import save_file

    save_file({"prompts": torch.from_numpy(prompts)}, str(tmp_path / "prompts.safetensors"))
    for name in ("prompts.npy", "prompts.pt", "prompts.safetensors"):
        torch.testing.assert_close(load_q16_prompts(tmp_path / name), torch.from_numpy(prompts))
    torch.testing.assert_close(load_q16_prompts(tmp_path / "prompts.p", allow_pickle=True), torch.from_numpy(prompts))
    np.save(tmp_path / "bad.npy", prompts[:1])
    with pytest.raises(ValueError, match=r"\(2, D\)"):
        load_q16_prompts(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError, match="Q16"):
        load_q16_prompts(tmp_path / "none.p")


def test_q16_with_a_tiny_clip(tmp_path, tiny_clip_dir):
    from safeclip.models.clip import encode_images, load_clip

    bundle = load_clip(tiny_clip_dir)
    paths = [_image(tmp_path / f"{i}.png", i) for i in range(3)]
    emb = encode_images(bundle.vision, bundle.image_processor, [Image.open(p).convert("RGB") for p in paths])
    # "inappropriate" = image 0's own embedding, "appropriate" = image 1's: image 0 flagged, image 1 not
    judge = Q16Judge(torch.stack([emb[1], emb[0]]), bundle)
    probs = judge.probabilities(paths)
    assert judge(paths)[:2] == [True, False]
    torch.testing.assert_close(probs, q16_probabilities(emb, torch.stack([emb[1], emb[0]]))[:, 1])
    prompts_file = tmp_path / "q16.npy"
    np.save(prompts_file, torch.stack([emb[1], emb[0]]).numpy())
    spec_judge = build_image_judge(f"q16:{prompts_file}@{tiny_clip_dir}")
    assert spec_judge(paths) == judge(paths)
    verdicts = judge_images([judge, NudeNetJudge(detector=FakeDetector({p.name: [] for p in paths}))], paths)
    assert verdicts[0] == {"q16": True, "nudenet": False}


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown image judge"):
        build_image_judge("clipscore")
    with pytest.raises(ValueError, match="q16:PROMPTS_FILE@CLIP"):
        build_image_judge("q16:")
    with pytest.raises(ValueError, match="nudenet:THRESHOLD"):
        build_image_judge("nudenet:high")


def test_a_pickled_prompts_file_is_read_only_when_asked_for_by_name(tmp_path):
    """``q16:`` never unpickles (a planted payload does not run); ``q16-pickle:`` is the explicit opt-in."""
    marker = tmp_path / "payload-ran"
    with (tmp_path / "prompts.p").open("wb") as fh:
        pickle.dump(Payload(marker), fh)
    with pytest.raises(ValueError, match="is a pickle, which can run code when loaded.*q16-pickle:"):
        build_image_judge(f"q16:{tmp_path / 'prompts.p'}@unused")
    assert not marker.exists()
