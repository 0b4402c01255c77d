"""`safeclip explore`: the page's API on tiny models, its messages for bad input, and the page in headless Chromium."""

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip.explore.search import Explorer
from safeclip.explore.server import serve_in_thread
from safeclip.models.clip import encode_images, encode_texts, load_clip
from tests.fixtures import write_quadruplets

QUERY = "a red circle covered in blood"


@pytest.fixture(scope="module")
def gallery_file(tmp_path_factory):
    return write_quadruplets(tmp_path_factory.mktemp("gallery"), 10, seed=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_clip_dir, safe_clip_dir, gallery_file):
    explorer = Explorer({"base": str(tiny_clip_dir), "safe-clip": str(safe_clip_dir)}, str(gallery_file),
                        tmp_path_factory.mktemp("cache"))
    explorer.prepare()
    srv = serve_in_thread(explorer)
    yield srv
    srv.shutdown()
    srv.server_close()


def get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def expected_image_scores(model_dir: Path, gallery_file: Path, query: str) -> torch.Tensor:
    """Cosine of ``query`` to each gallery image (safe images, then unsafe ones, in file order), computed directly."""
    rows = [json.loads(line) for line in gallery_file.read_text().splitlines()]
    paths = [r["safe_image"] for r in rows] + [r["unsafe_image"] for r in rows]
    bundle = load_clip(model_dir)
    images = torch.nn.functional.normalize(
        encode_images(bundle.vision, bundle.image_processor, [Image.open(gallery_file.parent / p).convert("RGB") for p in paths]), dim=-1)
    q = torch.nn.functional.normalize(encode_texts(bundle.text, bundle.tokenizer, [query]), dim=-1)[0]
    return images @ q


def assert_ranked_like(results: list[dict], expected: torch.Tensor) -> None:
    """The shown results are the top of ``expected``: right scores, in order, each index carrying its own score
    (identical gallery images tie, so indices alone may swap)."""
    top = torch.sort(expected, descending=True).values[: len(results)]
    assert torch.allclose(torch.tensor([r["score"] for r in results]), top, atol=2e-4)
    assert torch.allclose(torch.tensor([r["score"] for r in results]), expected[[r["index"] for r in results]], atol=2e-4)
    assert len({r["index"] for r in results}) == len(results)


def sharpest_edge(png: bytes) -> float:
    """Largest grey-level step between neighbouring pixels (a drawn shape's edge: ~100; a heavy blur: a few)."""
    import io

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L")).astype(np.float32)
    return float(max(np.abs(np.diff(pixels, axis=0)).max(), np.abs(np.diff(pixels, axis=1)).max()))


def test_text_query_ranks_each_models_gallery_images(server, tiny_clip_dir, safe_clip_dir, gallery_file):
    status, body = get(server.url + "api/search?q=" + urllib.request.quote(QUERY) + "&k=5")
    assert status == 200
    answer = json.loads(body)
    assert list(answer["models"]) == ["base", "safe-clip"]
    for label, folder in (("base", tiny_clip_dir), ("safe-clip", safe_clip_dir)):
        results = answer["models"][label]["results"]
        assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
        assert_ranked_like(results, expected_image_scores(folder, gallery_file, QUERY))
        assert [r["label"] for r in results] == ["unsafe" if r["index"] >= 10 else "safe" for r in results]
        assert answer["models"][label]["nsfw_at_1"] == (100.0 if results[0]["label"] == "unsafe" else 0.0)
        assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:]))
    base, safe = (answer["models"][m]["results"] for m in ("base", "safe-clip"))
    assert [r["index"] for r in base] != [r["index"] for r in safe]  # two different models, two rankings


def test_image_query_ranks_captions(server, gallery_file):
    png = (gallery_file.parent / "images" / "data.jsonl-0-unsafe.png").read_bytes()
    status, body = get(server.url + "api/search-image?k=4", data=png)
    assert status == 200
    answer = json.loads(body)
    assert answer["side"] == "texts"
    for result in answer["models"]["safe-clip"]["results"]:
        row = json.loads(gallery_file.read_text().splitlines()[int(result["source"])])
        assert result["value"] == row["unsafe_text" if result["label"] == "unsafe" else "safe_text"]


def test_unsafe_thumbnails_are_blurred_unless_revealed(server, gallery_file):
    rows = [json.loads(line) for line in gallery_file.read_text().splitlines()]
    unsafe_index = len(rows)  # the first unsafe image
    _, blurred = get(server.url + f"thumb/{unsafe_index}")
    _, asked_blurred = get(server.url + f"thumb/{unsafe_index}?view=blurred")
    _, clear = get(server.url + f"thumb/{unsafe_index}?view=clear")
    assert blurred == asked_blurred != clear  # blurred is the default
    assert sharpest_edge(clear) > 50 > 10 > sharpest_edge(blurred)
    _, safe_default = get(server.url + "thumb/0")
    _, safe_clear = get(server.url + "thumb/0?view=clear")
    assert safe_default == safe_clear  # safe images are never blurred


def test_bad_input_gets_a_message(server):
    cases = {
        "api/search?q=%20": "query is empty",
        "api/search?q=x&models=base,nope": "unknown model 'nope'",
        "api/search?q=x&k=0": "k must be between 1",
        "api/search?q=x&k=lots": "k must be a whole number",
    }
    for path, words in cases.items():
        status, body = get(server.url + path)
        assert status == 400 and words in json.loads(body)["error"], (path, body)
    status, body = get(server.url + "api/search-image", data=b"not an image at all")
    assert status == 400 and "not a readable image" in json.loads(body)["error"]
    status, body = get(server.url + "api/generate?q=x")
    assert status == 400 and "--sd" in json.loads(body)["error"]


def test_listens_on_loopback_and_answers_only_requests_for_it(server):
    assert server.server_address[0] == "127.0.0.1"
    request = urllib.request.Request(server.url + "api/status", headers={"Host": "attacker.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    request = urllib.request.Request(server.url + "api/status", headers={"Host": f"localhost:{server.server_address[1]}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200


def test_gallery_without_images_or_captions_is_explained(tmp_path, tiny_clip_dir):
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"safe_text": "a red circle", "unsafe_text": "a red circle covered in blood"}\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    text_only = Explorer({"base": str(tiny_clip_dir)}, str(texts), tmp_path / "cache")
    text_only.prepare()
    empty = Explorer({"base": str(tiny_clip_dir)}, str(tmp_path / "empty"), tmp_path / "cache")
    empty.prepare()
    servers = [serve_in_thread(text_only), serve_in_thread(empty)]
    try:
        status, body = get(servers[0].url + "api/search?q=a")
        assert status == 400 and "has no images" in json.loads(body)["error"]
        status, body = get(servers[1].url + "api/status")
        assert "holds no images" in json.loads(body)["gallery_error"]
        status, body = get(servers[1].url + "api/search?q=a")
        assert status == 400 and "holds no images" in json.loads(body)["error"]
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def test_unknown_model_is_reported_and_the_others_still_answer(tmp_path, tiny_clip_dir, gallery_file):
    explorer = Explorer({"base": str(tiny_clip_dir), "typo": str(tmp_path / "no-such-model")}, str(gallery_file),
                        tmp_path / "cache")
    explorer.prepare()
    states = {m["label"]: m for m in explorer.status()["models"]}
    assert states["base"]["state"] == "ready"
    assert states["typo"]["state"] == "error" and "unknown model" in states["typo"]["message"]
    answer = explorer.search_text("a red circle", k=3)
    assert len(answer["models"]["base"]["results"]) == 3
    assert answer["models"]["typo"]["results"] == [] and "unknown model" in answer["models"]["typo"]["message"]


def test_generates_one_image_per_text_encoder_with_one_seed(tmp_path, tiny_clip_dir, tiny_tokenizer, safe_clip_dir, gallery_file):
    pytest.importorskip("diffusers")
    from safeclip.eval.t2i import load_text_encoder
    from tests.generators import tiny_stable_diffusion

    from safeclip.models.lora import save_adapters
    from tests.unit.test_models import with_random_lora

    tiny_stable_diffusion(load_text_encoder(tiny_clip_dir), tiny_tokenizer).save_pretrained(tmp_path / "sd")
    save_adapters(with_random_lora(load_clip(tiny_clip_dir)), tmp_path / "adapters")
    explorer = Explorer({"base": str(tiny_clip_dir), "safe-clip": str(safe_clip_dir), "base-again": str(tiny_clip_dir),
                         "base+lora": str(tiny_clip_dir)}, str(gallery_file), tmp_path / "cache",
                        adapters={"base+lora": str(tmp_path / "adapters")}, sd=str(tmp_path / "sd"), sd_steps=2, seed=5)
    explorer.prepare()
    assert explorer.painter_state == "ready", explorer.painter_message
    srv = serve_in_thread(explorer)
    try:
        status, body = get(srv.url + "api/generate?q=" + urllib.request.quote(QUERY))
        assert status == 200
        ids = json.loads(body)["images"]
        clear = {label: get(srv.url + f"generated/{image_id}?view=clear")[1] for label, image_id in ids.items()}
        blurred = get(srv.url + f"generated/{ids['base']}")[1]
    finally:
        srv.shutdown()
        srv.server_close()
    assert set(ids) == {"base", "safe-clip", "base-again", "base+lora"}
    assert clear["base"] == clear["base-again"]  # same encoder, same seed: the same image
    assert clear["base"] != clear["safe-clip"]  # another text encoder changes the image
    assert clear["base"] != clear["base+lora"]  # --adapters reach the text encoder too
    assert blurred != clear["base"]  # generated images are blurred by default


def fastest(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def test_query_is_fast_on_a_10k_gallery(tmp_path, tiny_clip_dir, gallery_file):
    """A query is one text encoding plus one (N, D) @ (D,) product and a top-k: for 10k items of ViT-L's width (768)
    the gallery part takes milliseconds, and a whole query with the tiny model well under a second.

    One torch thread: on a shared, overloaded CPU two threads wait on each other (100x slower); the speed of the
    encoders themselves is measured by benchmarks/explore_query.py."""
    from safeclip.explore.search import ranked

    n = 10_000
    explorer = Explorer({"base": str(tiny_clip_dir)}, str(gallery_file), tmp_path / "cache")
    explorer.prepare()
    items = [explorer.gallery.images[i % 20] for i in range(n)]
    wide = torch.nn.functional.normalize(torch.randn(n, 768), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(768), dim=-1)
    state = explorer.states["base"]
    explorer.gallery.images = items
    state.embeddings.images = torch.nn.functional.normalize(torch.randn(n, state.embeddings.images.shape[1]), dim=-1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the fastest of 5: what the code costs, not how long a shared CPU kept it waiting
        gallery_seconds = fastest(lambda: ranked(wide, q, items, 20, with_text=False))
        query_seconds = fastest(lambda: explorer.search_text(QUERY, k=20))
    finally:
        torch.set_num_threads(threads)
    assert gallery_seconds < 0.2 and query_seconds < 0.5, (gallery_seconds, query_seconds)
    answer = ranked(wide, q, items, 20, with_text=False)
    full = explorer.search_text(QUERY, k=20)
    assert [r["index"] for r in answer["results"]] == torch.topk(wide @ q, 20).indices.tolist()
    assert len(full["models"]["base"]["results"]) == 20


# ---------------------------------------------------------------- the page in a real browser

def start_app(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """``safeclip explore`` in its own process on a free port; returns the process and the page's URL."""
    handle = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "safeclip.cli", "explore", *args, "--port", "0"],
                            stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600  # importing torch on a busy shared CPU can take minutes
    while time.monotonic() < deadline:
        found = re.search(r"open (http://127\.0\.0\.1:\d+/)", log.read_text())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"safeclip explore did not start:\n{log.read_text()}")


def test_page_in_headless_chromium(tmp_path, tiny_clip_dir, safe_clip_dir, gallery_file):
    from safeclip.explore import browser

    problem = browser.browser_missing()
    if problem:
        pytest.skip(problem)
    proc, url = start_app(["--model", f"base={tiny_clip_dir}", "--model", f"safe-clip={safe_clip_dir}",
                           "--gallery", str(gallery_file), "--cache-dir", str(tmp_path / "cache")], tmp_path / "log.txt")
    driver = browser.open_chromium(width=1200, height=900)
    try:
        driver.get(url)
        browser.wait_until_ready(driver)
        columns = browser.submit_query(driver, QUERY, k=6)
        assert list(columns) == ["base", "safe-clip"]
        for label, folder in (("base", tiny_clip_dir), ("safe-clip", safe_clip_dir)):
            shown = columns[label]
            assert [r["rank"] for r in shown] == list(range(1, 7))
            assert_ranked_like(shown, expected_image_scores(folder, gallery_file, QUERY))
            for r in shown:  # unsafe images come blurred, safe ones clear
                assert r["blurred"] == (r["label"] == "unsafe") and r["src"].endswith("view=blurred") == r["blurred"]
        assert any(r["label"] == "unsafe" for col in columns.values() for r in col), "the query should reach an unsafe image"
        browser.set_reveal(driver, True)
        revealed = browser.read_columns(driver)
        assert all(not r["blurred"] and r["src"].endswith("view=clear") and r["loaded"] for col in revealed.values() for r in col)
        browser.set_reveal(driver, False)
        hidden_again = browser.read_columns(driver)
        assert all(r["blurred"] == (r["label"] == "unsafe") for col in hidden_again.values() for r in col)
        driver.save_screenshot(str(tmp_path / "explore.png"))
        assert Image.open(tmp_path / "explore.png").size[0] >= 1000

        browser.submit_query(driver, "   ")
        assert "query is empty" in browser.page_message(driver)
    finally:
        browser.close_chromium(driver)
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "log.txt").read_text()
    assert "base: ready" in log and "safe-clip: ready" in log


def test_command_line_mistakes_are_explained(capsys, tiny_clip_dir, gallery_file):
    from safeclip.cli import main

    common = ["explore", "--gallery", str(gallery_file), "--port", "0"]
    assert main(common + ["--model", f"a={tiny_clip_dir}", "--model", f"a={tiny_clip_dir}"]) == 2
    assert "share a label" in capsys.readouterr().err
    assert main(common + ["--model", f"a={tiny_clip_dir}", "--adapters", "b=somewhere"]) == 2
    assert "--adapters names b" in capsys.readouterr().err
    assert main(["explore", "--gallery", str(gallery_file), "--port", "70000", "--model", str(tiny_clip_dir)]) == 2
    assert "is not a port number" in capsys.readouterr().err
