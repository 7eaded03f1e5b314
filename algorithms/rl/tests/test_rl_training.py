"""Name resolution, batching/masking on captured ids, trajectory aggregation, selective optimization, staleness,
offline training (the article's snippet), checkpoints and resume, LoRA."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from agent_lightning import InMemoryLightningStore, Trainer
from agent_lightning.store.sync import SyncStore
from agent_lightning.trajectory import build_episode
from agent_lightning.types import Sample
from agent_lightning_rl import losses
from agent_lightning_rl.advantages import drop_stale, sample_advantages, select_samples
from agent_lightning_rl.batching import collate
from agent_lightning_rl.config import GRPOConfig, LoraSettings, PPOConfig
from agent_lightning_rl.distributed import DeviceError
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from agent_lightning_rl.learner import PolicyModule
from conftest import teacher_forced_logprobs
from toy import save_tiny_policy
from traces import add_rollout
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast


def _sample(rollout: str, reward: float, group: str = "g", turn: int = 0, **kw: object) -> Sample:
    fields: dict[str, object] = {
        "rollout_id": rollout,
        "attempt_id": "a",
        "span_ids": [],
        "prompt_token_ids": [1, 2],
        "completion_token_ids": [3],
        "loss_mask": [1],
        "reward": reward,
        "group_id": group,
        "turn_index": turn,
    }
    fields.update(kw)
    return Sample(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- names
def test_names_resolve_through_the_plugin_entry_point() -> None:
    from agent_lightning import GRPOConfig as CoreGRPOConfig
    from agent_lightning import PPOConfig as CorePPOConfig
    from agent_lightning.algorithms import (
        GroupRelativePolicyOptimization as G,
    )
    from agent_lightning.algorithms import (
        ProximalPolicyOptimization,
        get_algorithm,
    )

    algorithm = ProximalPolicyOptimization(
        config=CorePPOConfig(learning_rate=3e-5, batch_size=256, trajectory_length=10)
    )
    assert algorithm.config.aggregation == "trajectory" and algorithm.config.trajectory_length == 10
    assert G is GroupRelativePolicyOptimization and CoreGRPOConfig is GRPOConfig and CorePPOConfig is PPOConfig
    assert get_algorithm("grpo", group_size=2).config.group_size == 2
    with pytest.raises(TypeError, match="PPOConfig"):
        ProximalPolicyOptimization(config=GRPOConfig())


def test_registering_imports_nothing_heavy() -> None:
    code = (
        "import sys; from agent_lightning.algorithms import algorithm_entries; e = algorithm_entries(); "
        "assert {'ppo', 'grpo'} <= set(e), e; "
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- batching and masking
def test_left_padded_batch_gives_each_samples_own_logprobs(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    a = _sample("r1", 1.0, prompt_token_ids=[5, 6, 7, 8, 9], completion_token_ids=[10, 11], loss_mask=[1, 1])
    b = _sample("r2", 0.0, prompt_token_ids=[12, 13], completion_token_ids=[14, 15, 16, 17], loss_mask=[1, 0, 0, 1])
    batch = collate([a, b], pad_id=int(tokenizer.pad_token_id))
    assert batch.loss_mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 1]]  # padding and spliced tokens carry no loss
    for fused in (True, False):
        with torch.no_grad():
            got, _, _ = PolicyModule(model, fused=fused)(batch)
        for row, sample in enumerate([a, b]):
            want = teacher_forced_logprobs(model, sample.prompt_token_ids, sample.completion_token_ids)
            n = len(sample.completion_token_ids)
            assert got[row, :n].tolist() == pytest.approx(want, abs=1e-4)


def test_fused_lm_head_matches_full_logits_in_value_and_gradient(model: LlamaForCausalLM) -> None:
    a = _sample("r1", 1.0, prompt_token_ids=[5, 6, 7], completion_token_ids=[10, 11, 12], loss_mask=[1, 0, 1])
    b = _sample("r2", 0.0, prompt_token_ids=[12, 13, 14, 15], completion_token_ids=[16, 17], loss_mask=[1, 1])
    batch = collate([a, b], pad_id=0)
    grads = []
    for fused in (True, False):
        model.zero_grad()
        module = PolicyModule(model, fused=fused)
        assert module.fused is fused
        logprobs, entropy, _ = module(batch, batch.loss_mask, temperature=0.7)
        loss, _ = losses.policy_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -0.5]), batch.loss_mask)
        loss.backward()
        grads.append(
            ([p.grad.clone() for p in model.parameters()], logprobs * batch.loss_mask, entropy * batch.loss_mask)
        )
    (g_fused, lp_fused, ent_fused), (g_full, lp_full, ent_full) = grads
    assert torch.allclose(lp_fused, lp_full, atol=1e-5) and torch.allclose(ent_fused, ent_full, atol=1e-4)
    for x, y in zip(g_fused, g_full, strict=True):
        assert torch.allclose(x, y, atol=1e-6, rtol=1e-4)


def test_tool_tokens_of_a_merged_trace_get_no_gradient(model: LlamaForCausalLM) -> None:
    """Synthetic two-turn trace: turn 2's prompt extends turn 1 with tool output; merged, the tool tokens are masked."""
    sync = SyncStore(InMemoryLightningStore())
    turn1 = ([1, 2, 3], [4, 5])
    turn2 = ([1, 2, 3, 4, 5, 6, 7], [8, 9])  # 6, 7: tool output
    rollout = add_rollout(sync, {"q": 1}, [turn1, turn2], reward=1.0)
    spans = sync.query_spans(rollout.rollout_id)

    merged = build_episode(rollout, spans, aggregation="trajectory")
    (sample,) = merged.samples
    assert sample.prompt_token_ids == [1, 2, 3]
    assert sample.completion_token_ids == [4, 5, 6, 7, 8, 9]
    assert sample.loss_mask == [1, 1, 0, 0, 1, 1]
    assert sample.reward == 1.0
    bounded = build_episode(rollout, spans, aggregation="trajectory", max_turns=1)
    per_call = build_episode(rollout, spans, aggregation="transition")
    for episode in (bounded, per_call):  # trajectory_length=1 is per-call; the final reward reaches both turns
        assert [s.completion_token_ids for s in episode.samples] == [[4, 5], [8, 9]]
        assert [s.reward for s in episode.samples] == [1.0, 1.0]

    batch = collate([sample], pad_id=0)
    logprobs, _, _ = PolicyModule(model, fused=False)(batch)
    logprobs.retain_grad()
    loss, _ = losses.policy_loss(logprobs, logprobs.detach(), torch.tensor([1.0]), batch.loss_mask)
    loss.backward()
    assert logprobs.grad is not None
    per_token = logprobs.grad[0].abs()
    assert per_token[2].item() == 0.0 and per_token[3].item() == 0.0  # tool output: no loss
    assert all(per_token[i].item() > 0 for i in (0, 1, 4, 5))


# ---------------------------------------------------------------------------- sample selection and advantages
def test_selective_optimization_and_staleness() -> None:
    router = _sample("r1", 1.0, agent_name="router")
    worker = _sample("r1", 1.0, agent_name="worker", turn=1)
    tool_user = _sample("r2", 0.0, resource_names=["router_prompt"])
    assert select_samples([router, worker, tool_user], ["router"]) == [router]
    assert select_samples([router, worker, tool_user], ["router_prompt"]) == [tool_user]
    assert select_samples([router, worker], None) == [router, worker]

    old, new, unknown = (_sample("r", 0.0, resources_id=x) for x in ("res-1", "res-3", None))
    kept, dropped = drop_stale([old, new, unknown], {"res-1": 1, "res-3": 3}, current=3, max_staleness=1)
    assert kept == [new, unknown] and dropped == 1


def test_group_advantages_count_rollouts_not_turns() -> None:
    # rollout r1 (reward 1) has three turns, r2 (reward 0) one: the group is {1, 0}, not {1, 1, 1, 0}
    samples = [_sample("r1", 1.0, turn=t) for t in range(3)] + [_sample("r2", 0.0)]
    grpo = sample_advantages(samples, "grpo")
    std = 2**-0.5
    assert grpo == pytest.approx([0.5 / std] * 3 + [-0.5 / std], rel=1e-4)
    assert sample_advantages(samples, "rloo") == pytest.approx([1.0, 1.0, 1.0, -1.0])
    assert sample_advantages([_sample("solo", 1.0, group="alone")], "grpo") == [0.0]


# ---------------------------------------------------------------------------- offline training, checkpoints, resume
def _fill(sync: SyncStore, n_tasks: int, group: int, vocab: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for task in range(n_tasks):
        prompt = torch.randint(3, vocab, (4 + task % 3,), generator=gen).tolist()
        for _ in range(group):
            completion = torch.randint(3, vocab, (3,), generator=gen).tolist()
            reward = float(completion[0] % 2)
            add_rollout(sync, {"task": task}, [(prompt, completion)], reward)


def test_offline_grpo_checkpoints_and_resumes(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    model_dir = save_tiny_policy(tokenizer, tmp_path / "model")
    store = InMemoryLightningStore()
    _fill(SyncStore(store), n_tasks=4, group=4, vocab=len(tokenizer))
    config = GRPOConfig(
        model=model_dir, learning_rate=1e-3, batch_size=8, kl_coef=0.05, ppo_epochs=2, mini_batch_size=4
    )
    checkpoints = tmp_path / "checkpoints"
    first = Trainer(algorithm=GroupRelativePolicyOptimization(config=config), store=store, run_dir=tmp_path / "run1")
    result = first.train(num_iterations=2, checkpoint_dir=checkpoints)
    assert result.iterations == 2 and result.checkpoint == checkpoints / "checkpoint-000002"
    last = result.metrics[-1]
    assert last["train/optimizer_steps"] == 4 and last["train/kl"] >= 0 and 0 <= last["train/clip_frac"] <= 1
    trained = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    initial = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch.equal(trained.lm_head.weight, initial.lm_head.weight)

    again = Trainer(algorithm=GroupRelativePolicyOptimization(config=config), store=store, run_dir=tmp_path / "run2")
    resumed = again.train(num_iterations=3, checkpoint_dir=checkpoints)
    assert resumed.iterations == 3
    steps = [m["step"] for m in resumed.metrics]
    assert steps == [3.0]  # picked up at iteration 2 from the checkpoint
    state = torch.load(checkpoints / "checkpoint-000003" / "trainer_state.pt", weights_only=False)
    assert state["iteration"] == 3 and state["steps"] == 12 and state["optimizer"]["state"]


def test_offline_with_lora_and_selective_optimization(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    model_dir = save_tiny_policy(tokenizer, tmp_path / "model")
    sync = SyncStore(InMemoryLightningStore())
    for i in range(6):
        prompt, route, work = [5, 6, 7 + i], [20 + i, 21], [40 + i, 41]
        add_rollout(
            sync,
            {"i": i % 2},
            [(prompt, route), (prompt + route + [9], work)],
            float(i % 3 == 0),
            agents=["router", "worker"],
        )
    config = GRPOConfig(
        model=model_dir, learning_rate=1e-2, batch_size=6, optimize=["router"], lora=LoraSettings(r=4, alpha=8)
    )
    algorithm = GroupRelativePolicyOptimization(config=config)
    result = Trainer(algorithm=algorithm, store=sync.store, run_dir=tmp_path / "run").train(
        num_iterations=2, checkpoint_dir=tmp_path / "ck"
    )
    assert result.metrics[0]["train/samples"] == 6  # the worker's six calls were left out
    assert result.checkpoint is not None and (result.checkpoint / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)  # not adapted

    with pytest.raises(Exception, match="matches none"):
        bad = GroupRelativePolicyOptimization(config=config.model_copy(update={"optimize": ["planner"]}))
        Trainer(algorithm=bad, store=sync.store, run_dir=tmp_path / "bad").train(num_iterations=1)


def test_offline_without_data_fails_loudly(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    from agent_lightning.errors import NoTrainingData

    config = GRPOConfig(model=save_tiny_policy(tokenizer, tmp_path / "model"))
    trainer = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config), store=InMemoryLightningStore(), run_dir=tmp_path
    )
    with pytest.raises(NoTrainingData, match="no finished train rollouts"):
        trainer.train(num_iterations=1)


@pytest.mark.slow
def test_article_snippet_offline_on_the_default_model(
    smollm2_tokenizer: PreTrainedTokenizerFast, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The article's snippet, verbatim but for num_iterations (and num_gpus=0 on a machine without 8 GPUs), on a
    store already holding collected traces."""
    from agent_lightning import PPOConfig as ArticlePPOConfig
    from agent_lightning import Trainer as ArticleTrainer
    from agent_lightning.algorithms import ProximalPolicyOptimization

    lightning_store = InMemoryLightningStore()
    sync = SyncStore(lightning_store)
    for i, question in enumerate(["What is 2+3?", "Name a colour.", "Say hi."]):
        prompt = smollm2_tokenizer.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
        for j in range(2):
            answer = smollm2_tokenizer.encode(f"Answer {i}-{j}.<|im_end|>")
            tool = smollm2_tokenizer.encode("\n<|im_start|>tool\nok<|im_end|>\n<|im_start|>assistant\n")
            second = prompt + answer + tool
            add_rollout(sync, {"q": question}, [(prompt, answer), (second, answer)], float(j))

    def article_trainer(num_gpus: int) -> ArticleTrainer:
        return ArticleTrainer(
            algorithm=ProximalPolicyOptimization(
                config=ArticlePPOConfig(learning_rate=3e-5, batch_size=256, trajectory_length=10)
            ),
            store=lightning_store,
            num_gpus=num_gpus,
            run_dir=tmp_path / "run",
        )

    caplog.set_level(logging.WARNING)
    trainer = article_trainer(num_gpus=8)
    if torch.cuda.device_count() < 8:
        # num_gpus=8 means eight GPUs: without them the snippet stops before loading anything, naming what it found
        with pytest.raises(DeviceError, match=r"num_gpus=8, but this machine has .*cpu_fallback=True"):
            trainer.train(num_iterations=1, eval_interval=50, checkpoint_dir=tmp_path / "checkpoints")
        assert not (tmp_path / "checkpoints").exists()
        trainer = article_trainer(num_gpus=0)  # the same run on this machine's CPU
    result = trainer.train(num_iterations=1, eval_interval=50, checkpoint_dir=tmp_path / "checkpoints")
    assert result.iterations == 1 and result.checkpoint is not None
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["train/samples"] == 6  # two turns merged into one sequence per rollout
    assert {"train/kl", "train/value_loss", "train/entropy", "perf/tokens_per_s"} <= set(metrics)
    AutoModelForCausalLM.from_pretrained(result.checkpoint)


def test_bf16_autocast_update_follows_the_fp32_gradient(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    from agent_lightning_rl.learner import PolicyLearner

    samples = [
        _sample("r1", 1.0, prompt_token_ids=[5, 6, 7], completion_token_ids=[10, 11, 12], loss_mask=[1, 1, 1]),
        _sample("r2", 0.0, prompt_token_ids=[12, 13], completion_token_ids=[16, 17], loss_mask=[1, 1]),
    ]
    advantages = [torch.full((3,), 1.0), torch.full((2,), -1.0)]
    updates = []
    for autocast in (None, "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(save_tiny_policy(tokenizer, tmp_path / f"m-{autocast}"))
        before = model.lm_head.weight.detach().clone()
        learner = PolicyLearner(model, GRPOConfig(learning_rate=1e-3, autocast=autocast, max_grad_norm=None), pad_id=0)
        metrics = learner.update(samples, advantages)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
        updates.append((model.lm_head.weight.detach() - before).flatten())
    cosine = torch.nn.functional.cosine_similarity(updates[0], updates[1], dim=0)
    assert cosine > 0.95


def test_sampler_logprobs_as_the_old_logprobs(model: LlamaForCausalLM) -> None:
    from agent_lightning_rl.learner import PolicyLearner

    prompt, completion = [5, 6, 7], [10, 11, 12]
    current = teacher_forced_logprobs(model, prompt, completion)
    config = GRPOConfig(learning_rate=0.0, use_rollout_logprobs=True, clip_range=0.2)
    on_policy = _sample("r1", 1.0, prompt_token_ids=prompt, completion_token_ids=completion, loss_mask=[1, 1, 1])
    on_policy.completion_logprobs = current
    stale = on_policy.model_copy(update={"completion_logprobs": [lp - math.log(2) for lp in current]})
    learner = PolicyLearner(model, config, pad_id=0)
    fresh = learner.update([on_policy], [torch.ones(3)])
    assert fresh["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4) and fresh["train/clip_frac"] == 0.0
    old = learner.update([stale], [torch.ones(3)])
    assert old["train/ratio_mean"] == pytest.approx(2.0, rel=1e-3) and old["train/clip_frac"] == 1.0
