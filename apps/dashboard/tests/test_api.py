"""The dashboard's JSON API over real HTTP, against a real SQLite store holding a demo-like run."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from agent_lightning_dashboard.queries import grpo_advantages
from conftest import API_KEY, Served
from dashboard_demo_run import SYSTEM


def get(served: Served, path: str, **params: object) -> dict:
    response = httpx.get(served.url + path, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_rollouts_list_shows_each_column(served: Served) -> None:
    run = served.run
    data = get(served, "/api/rollouts", status="succeeded", task_type="calc")
    assert data["total"] == 10  # 8 calculator rollouts, the one without token ids, the TrainingContext one
    rows = {r["rollout_id"]: r for r in data["items"]}
    solved = rows[run.known["solved"]]
    assert solved["reward"] == 1.0 and solved["resources_version"] == 1 and solved["worker"] == "runner-0"
    assert solved["attempts"] == 1 and solved["duration"] > 0
    retried = rows[run.known["retried"]]
    assert retried["attempts"] == 2 and retried["worker"] == "runner-1" and retried["resources_version"] == 2
    context = rows[run.known["context"]]  # recorded by agl.TrainingContext: its root span names the resources
    assert context["reward"] == 1.0 and context["resources_version"] == 2
    # newest first: the TrainingContext rollout was created last
    assert data["items"][0]["rollout_id"] == run.known["context"]


def test_rollouts_paging_and_filters(served: Served) -> None:
    everything = get(served, "/api/rollouts", size=100)
    assert everything["total"] == 15
    pages = [get(served, "/api/rollouts", size=5, page=p) for p in range(3)]
    assert [p["pages"] for p in pages] == [3] * 3
    ids = [r["rollout_id"] for p in pages for r in p["items"]]
    assert ids == [r["rollout_id"] for r in everything["items"]]
    oldest = get(served, "/api/rollouts", size=5, order="oldest")
    assert [r["rollout_id"] for r in oldest["items"]] == ids[::-1][:5]
    search = get(served, "/api/rollouts", task_type="search")
    assert search["total"] == 2 and {r["status"] for r in search["items"]} == {"queuing", "running"}
    assert get(served, "/api/rollouts", status="queuing,running")["total"] == 5
    bad = httpx.get(served.url + "/api/rollouts", params={"size": "0"})
    assert bad.status_code == 400 and "page size" in bad.json()["error"]


def test_rollout_trace_has_tree_llm_calls_and_rewards_on_their_span(served: Served) -> None:
    run = served.run
    data = get(served, f"/api/rollouts/{run.known['solved']}")
    spans = data["spans"]
    assert [(s["name"], s["depth"]) for s in spans] == [
        ("calc_agent", 0),
        ("agent_step", 1),
        ("chat policy", 2),
        ("execute_tool calculator", 2),
        ("chat policy", 2),
        ("reward", 2),
    ]
    step = next(s for s in spans if s["span_id"] == run.known["solved_step"])
    assert step["rewards"] == [1.0]
    llm = [s for s in spans if s["kind"] == "llm"]
    assert llm[0]["output_messages"][0]["tool_calls"][0]["function"]["name"] == "calculator"
    assert llm[0]["input_messages"][0] == {"role": "system", "content": SYSTEM}
    assert llm[1]["latency_ms"] == 412.5 and llm[1]["input_tokens"] > llm[0]["input_tokens"]
    assert llm[1]["attributes"]["agl.llm.prompt_token_ids"] == {"omitted": f"{llm[1]['input_tokens']} values"}
    tool = next(s for s in spans if s["kind"] == "tool")
    assert tool["tool_result"] == "84"


def test_retried_rollout_shows_each_attempt(served: Served) -> None:
    rollout_id = served.run.known["retried"]
    data = get(served, f"/api/rollouts/{rollout_id}")
    assert [a["status"] for a in data["attempts"]] == ["failed", "succeeded"]
    assert data["attempts"][0]["error"] == "RuntimeError: boom"
    first = get(served, f"/api/rollouts/{rollout_id}", attempt=data["attempts"][0]["attempt_id"])
    assert [s["name"] for s in first["spans"]] == ["calc_agent", "agent_step"]
    assert len(data["spans"]) == 6


def test_training_view_decodes_tokens_and_marks_masked_ones(served: Served) -> None:
    run = served.run
    data = get(served, f"/api/rollouts/{run.known['solved']}/training", aggregation="trajectory")
    assert data["warnings"] == [] and data["no_training_data"] is None and data["reward"] == 1.0
    (sample,) = data["samples"]
    tokens = sample["completion"]
    trained = "".join(t["text"] for t in tokens if t["trained"])
    masked = "".join(t["text"] for t in tokens if not t["trained"])
    assert "RESULT 84" in masked and "ANSWER: 84" in trained and "RESULT" not in trained
    assert trained.startswith('<tool_call> {"expression": "12*7"}')
    assert sample["trainable_tokens"] == sum(t["trained"] for t in tokens)
    # GRPO against its group (answers 84, 84, 80, 84: rewards 1, 1, 0, 1)
    assert data["group"]["rollouts"] == 4
    assert sample["advantage"] == pytest.approx(0.5, abs=1e-4)
    assert sample["reward"] == 1.0
    # one sample per call without merging
    transition = get(served, f"/api/rollouts/{run.known['solved']}/training")
    assert len(transition["samples"]) == 2 and all(t["trained"] for s in transition["samples"] for t in s["completion"])


def test_training_view_shows_build_episode_warnings(served: Served) -> None:
    data = get(served, f"/api/rollouts/{served.run.known['no_ids']}/training")
    assert data["samples"] == []
    assert any("without token ids" in w for w in data["warnings"])
    assert "produced no training samples" in data["no_training_data"]
    context = get(served, f"/api/rollouts/{served.run.known['context']}/training")
    assert any("no LLM-call spans" in w for w in context["warnings"])


def test_training_view_without_tokenizer_shows_ids(served: Served) -> None:
    from agent_lightning_dashboard.tokens import Decoder

    assert Decoder(None)([1, 2]) is None
    broken = Decoder(str(served.run.folder / "missing"))
    assert broken([1]) is None and "cannot load the tokenizer" in (broken.error or "")


def test_runs_metrics_and_resources(served: Served) -> None:
    run = served.run
    data = get(served, "/api/runs")
    assert [r["name"] for r in data["runs"]] == [run.folder.name]
    versions = {v["version"]: v for v in data["resources"]}
    assert versions[1]["rollouts"] == {"succeeded": 4} and versions[2]["rollouts"] == {"succeeded": 4}
    assert versions[1]["resources"]["system"]["template"] == SYSTEM
    metrics = get(served, f"/api/runs/{run.folder.name}/metrics")
    assert len(metrics["records"]) == run.metrics_steps
    assert sum("eval/accuracy" in r for r in metrics["records"]) == 3
    # polling from the returned offset gives only what was appended since, complete lines only
    path = run.folder / "metrics.jsonl"
    again = get(served, f"/api/runs/{run.folder.name}/metrics", offset=metrics["offset"])
    assert again["records"] == []
    with path.open("a") as handle:
        handle.write(json.dumps({"step": 7, "time": 0.0, "train/reward_mean": 0.8}) + "\n" + '{"step": 8')
    try:
        more = get(served, f"/api/runs/{run.folder.name}/metrics", offset=metrics["offset"])
        assert [r["step"] for r in more["records"]] == [7.0]
    finally:
        path.write_text(path.read_text()[: metrics["offset"]])
    missing = httpx.get(served.url + "/api/runs/nope/metrics")
    assert missing.status_code == 404


def test_queues_per_task_type(served: Served) -> None:
    data = get(served, "/api/queues")
    rows = {r["task_type"]: r for r in data["rows"]}
    assert rows["calc"]["depth"] == 3 and rows["search"]["queuing"] == 1 and rows["search"]["running"] == 1
    assert rows[None]["depth"] == 4
    assert data["totals"]["succeeded"] == 10 and data["totals"]["running"] == 1
    assert data["subscription_groups"] == [
        {"group": "archive", "task_types": None, "pending": 10, "delivered": 0},
        {"group": "trainer", "task_types": ["calc"], "pending": 6, "delivered": 4},
    ]


def test_api_key_is_required_and_the_page_sets_a_cookie(served_with_key: Served) -> None:
    url = served_with_key.url
    assert httpx.get(url + "/api/rollouts").status_code == 401
    assert httpx.get(url + "/api/rollouts", headers={"x-api-key": "wrong"}).status_code == 401
    assert httpx.get(url + "/api/rollouts", headers={"x-api-key": API_KEY}).status_code == 200
    assert httpx.get(url + "/api/rollouts", headers={"authorization": f"Bearer {API_KEY}"}).status_code == 200
    login = httpx.get(url + "/")
    assert login.status_code == 401 and 'name="key"' in login.text
    with httpx.Client(base_url=url) as client:
        opened = client.get("/", params={"key": API_KEY}, follow_redirects=True)
        assert opened.status_code == 200 and "static/app.js" in opened.text
        assert client.get("/api/queues").status_code == 200  # the cookie carries the key
    assert httpx.get(url + "/static/app.js").status_code == 200  # assets hold no data


def test_grpo_advantages() -> None:
    assert grpo_advantages({"a": 1.0}) == {"a": 0.0}
    result = grpo_advantages({"a": 1.0, "b": 0.0})
    assert result["a"] == pytest.approx(0.7071, abs=1e-3) and result["b"] == pytest.approx(-0.7071, abs=1e-3)


def test_a_trainers_checkpoint_folder_decodes_with_its_newest_checkpoint(tmp_path: Path) -> None:
    from agent_lightning_dashboard.tokens import _model_folder

    for name in ("checkpoint-000002", "checkpoint-000010"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer_config.json").write_text("{}")
    (tmp_path / "checkpoint-000011").mkdir()  # no tokenizer in it (an interrupted save)
    assert _model_folder(str(tmp_path)) == str(tmp_path / "checkpoint-000010")
    assert _model_folder(str(tmp_path / "checkpoint-000002")) == str(tmp_path / "checkpoint-000002")
