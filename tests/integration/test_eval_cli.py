"""`safeclip eval retrieval` through the CLI on a base model and a trained run folder."""

import json

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
