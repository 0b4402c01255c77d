"""NSFW judges and toxicity scorers: lexicon, a tiny local HF classifier, an OpenAI-compatible stub server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from safeclip.judges import (
    LexiconToxicity,
    OpenAIChatJudge,
    TextJudge,
    ToxicityScorer,
    build_judge,
    build_toxicity,
    parse_yes_no,
)


def test_world_lexicon_judge_flags_category_phrases():
    from safeclip.world.categories import PHRASES

    judge = build_judge("lexicon")
    assert isinstance(judge, TextJudge) and judge.name == "lexicon"
    unsafe = [f"a red circle {phrases[0]}" for phrases in PHRASES.values()]
    assert judge(unsafe) == [True] * len(unsafe)
    assert judge(["a red circle left of a big blue square", "", "a green star"]) == [False, False, False]


def test_lexicon_file_words_and_phrases(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# comment\nknife\nbad thing\n\n", encoding="utf-8")
    judge = build_judge(f"lexicon:{path}")
    assert judge(["Holding a KNIFE!", "a bad thing here", "a bad day", "things are bad"]) == [True, True, False, False]
    tox = build_toxicity(f"lexicon:{path}")
    assert isinstance(tox, ToxicityScorer)
    # "a bad thing here": 2 flagged of 4 words -> min(1, 3 * 0.5) = 1; "x knife y z w v": 3 * 1/6 = 0.5
    assert tox(["a bad thing here", "x knife y z w v", "nothing", ""]) == [1.0, 0.5, 0.0, 0.0]


def test_lexicon_toxicity_scale():
    tox = LexiconToxicity(frozenset({"gun"}), scale=1.0)
    assert tox(["a gun", "a b c gun"]) == [0.5, 0.25]


def test_bad_specs_name_the_accepted_forms(tmp_path):
    for spec in ("perspective", "hf:", "openai:gpt", "openai:@http://x"):
        with pytest.raises(ValueError, match="accepted forms"):
            build_judge(spec)
    with pytest.raises(ValueError, match="accepted forms"):
        build_toxicity("openai:gpt@http://x")
    with pytest.raises(FileNotFoundError, match="one word or phrase per line"):
        build_judge(f"lexicon:{tmp_path / 'missing.txt'}")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="no entries"):
        build_judge(f"lexicon:{empty}")


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory):
    """A randomly initialised BERT text classifier (labels SAFE/NSFW) with a locally trained tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    from safeclip.models.tokenizer import train_clip_tokenizer

    texts = ["a red circle with a knife", "a blue square covered in blood", "a green star left of a cube"] * 5
    tokenizer = train_clip_tokenizer(texts, vocab_size=300, model_max_length=32)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2,
                        id2label={0: "SAFE", 1: "NSFW"}, label2id={"SAFE": 0, "NSFW": 1})
    model = BertForSequenceClassification(config).eval()
    out = tmp_path_factory.mktemp("clf")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, model, tokenizer


def _direct_probs(model, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.softmax(-1)  # (B, 2)


def test_hf_judge_matches_the_model(tiny_classifier_dir):
    folder, model, tokenizer = tiny_classifier_dir
    texts = ["a red circle with a knife", "a green star", "a blue square covered in blood", "a cube"]
    probs = _direct_probs(model, tokenizer, texts)
    judge = build_judge(f"hf:{folder}@NSFW")
    assert judge.name.endswith("@NSFW")
    assert judge(texts) == (probs[:, 1] > probs[:, 0]).tolist()
    assert build_judge(f"hf:{folder}")(texts) == judge(texts)  # NSFW label found without @LABEL
    assert build_judge(f"hf:{folder}@SAFE")(texts) == (probs[:, 0] > probs[:, 1]).tolist()
    tox = build_toxicity(f"hf:{folder}@NSFW")(texts)
    assert tox == pytest.approx(probs[:, 1].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="not one of the model's labels"):
        build_judge(f"hf:{folder}@toxic")


def test_hf_judge_missing_model(tmp_path):
    with pytest.raises((FileNotFoundError, OSError, ValueError)):
        build_judge(f"hf:{tmp_path / 'nothing-here'}")


def test_parse_yes_no():
    assert parse_yes_no("Yes.") is True
    assert parse_yes_no("  no, it is fine") is False
    assert parse_yes_no("NSFW") is True
    with pytest.raises(ValueError, match="yes/no"):
        parse_yes_no("I cannot say")


def test_openai_judge_with_injected_transport():
    seen = []

    def transport(url, payload, headers):
        seen.append((url, payload, headers))
        text = payload["messages"][0]["content"]
        return {"choices": [{"message": {"content": "Yes" if "knife" in text else "No."}}]}

    judge = OpenAIChatJudge("gpt-3.5-turbo", "http://local/v1/", prompt="NSFW? {text}", transport=transport,
                            api_key="k")
    assert judge(["a knife", "a cat"]) == [True, False]
    url, payload, headers = seen[0]
    assert url == "http://local/v1/chat/completions"
    assert payload["model"] == "gpt-3.5-turbo" and payload["messages"][0]["content"] == "NSFW? a knife"
    assert headers == {"Authorization": "Bearer k"}
    with pytest.raises(ValueError, match="must contain"):
        OpenAIChatJudge("m", "http://x", prompt="no placeholder")


def test_openai_judge_over_local_http_server(monkeypatch):
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append((self.path, body, self.headers.get("Authorization")))
            content = "yes" if body["messages"][0]["content"].endswith("in blood") else "no"
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "secret")
        judge = build_judge(f"openai:my-model@http://127.0.0.1:{server.server_port}/v1")
        assert judge(["covered in blood", "a red circle"]) == [True, False]
    finally:
        server.shutdown()
    assert requests[0][0] == "/v1/chat/completions"
    assert requests[0][1]["model"] == "my-model"
    assert requests[0][2] == "Bearer secret"
    assert any("covered in blood" in body["messages"][0]["content"] for _, body, _ in requests)  # asked concurrently


class FlakyEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that misbehaves by text: errors first, refusals, garbage, a dead text."""

    calls: dict = {}
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"].split("Text: ")[-1]
        cls = type(self)
        with cls.lock:
            cls.calls[text] = cls.calls.get(text, 0) + 1
            n = cls.calls[text]
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            import time

            time.sleep(0.05)
            if text.startswith("flaky") and n <= 2:
                return self._send(503, b"busy")
            if text.startswith("limited") and n == 1:
                return self._send(429, b"slow down")
            if text.startswith("dead"):
                return self._send(500, b"boom")
            if text.startswith("forbidden"):
                return self._send(401, b"no key")
            if text.startswith("garbage"):
                return self._send(200, b"<html>proxy error</html>")
            if text.startswith("shapeless"):
                return self._send(200, json.dumps({"error": "quota"}).encode())
            content = ("I'm sorry, but I can't help with that." if text.startswith("refuse")
                       else "Yes." if "blood" in text or text.startswith("flaky") else "No")
            self._send(200, json.dumps({"choices": [{"message": {"content": content}}]}).encode())
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _send(self, status, data):
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def flaky_server():
    from http.server import ThreadingHTTPServer

    FlakyEndpoint.calls, FlakyEndpoint.most_in_flight = {}, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_llm_judge_survives_errors_refusals_and_garbage(flaky_server, tmp_path):
    from safeclip.judges import LLMJudgeSettings

    waits = []
    cache = tmp_path / "judge_cache.jsonl"
    settings = LLMJudgeSettings(concurrency=4, retries=3, backoff=0.5, cache=str(cache))
    judge = OpenAIChatJudge("m", flaky_server, prompt="NSFW? Text: {text}", api_key="", settings=settings,
                            sleep=waits.append)
    texts = ["flaky 1", "limited 1", "a cube covered in blood", "a red circle", "refuse 1", "garbage 1",
             "shapeless 1", "dead 1", "a red circle"]
    assert judge(texts) == [True, False, True, False, None, None, None, None, False]
    calls = FlakyEndpoint.calls
    assert calls["flaky 1"] == 3 and calls["limited 1"] == 2 and calls["dead 1"] == 4  # retried, then given up
    assert calls["a red circle"] == 1  # asked once for two occurrences
    assert FlakyEndpoint.most_in_flight >= 2  # concurrent requests
    assert sorted(waits)[:3] == [pytest.approx(0.5, rel=0.11)] * 3 and max(waits) == pytest.approx(2.0, rel=0.11)
    assert judge.replies["refuse 1"]["reply"].startswith("I'm sorry") and judge.replies["refuse 1"]["nsfw"] is None
    assert "HTTP 500" in judge.replies["dead 1"]["error"]
    # the cache: a new judge reads it back and asks only the text whose requests all failed
    before = dict(calls)
    again = OpenAIChatJudge("m", flaky_server, prompt="NSFW? Text: {text}", api_key="", settings=settings,
                            sleep=waits.append)
    assert again(texts) == [True, False, True, False, None, None, None, None, False]
    assert {t: calls[t] - before.get(t, 0) for t in calls if calls[t] != before.get(t, 0)} == {"dead 1": 4}
    assert len(cache.read_text().splitlines()) == 7  # readable and unreadable replies, not transport failures
    with pytest.raises(ValueError, match="HTTP 401"):  # a wrong key or URL is not retried: it names the fix
        judge(["forbidden 1"])
