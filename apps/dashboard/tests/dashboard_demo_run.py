"""A demo-like run in a real SQLite store, as `agl demo` leaves one: the calculator agent's rollouts with
proxy-shaped LLM spans (token ids, messages, tool calls), tool spans and rewards, two resources versions,
a retried rollout, a rollout without token ids, queued work, a rollout recorded through ``agl.TrainingContext``,
a ``metrics.jsonl`` written by ``MetricsLogger``, and a word-level tokenizer saved as a model folder."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

import agent_lightning as agl
from agent_lightning import semconv
from agent_lightning.metrics import MetricsLogger
from agent_lightning.store import open_store
from agent_lightning.types import LLM, PromptTemplate, RolloutRequest, Span, SpanStatus
from agent_lightning.types.spans import new_span_id, new_trace_id

SYSTEM = "You are a calculator agent. Call the calculator, then write ANSWER: n"
SPECIALS = ["<|im_start|>", "<|im_end|>"]
_PIECE = re.compile(r"<\|im_(?:start|end)\|>|\n| ?(?:(?!<\|im_)\S)+")


def _pieces(text: str) -> list[str]:
    return [p.replace(" ", "Ġ").replace("\n", "Ċ") for p in _PIECE.findall(text)]


class Vocab:
    """A word-level byte-level vocabulary grown from the texts the run uses."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"<unk>": 0, **{s: i + 1 for i, s in enumerate(SPECIALS)}}

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in _pieces(text):
            out.append(self.ids.setdefault(piece, len(self.ids)))
        return out

    def save(self, folder: Path) -> Path:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tokenizer = Tokenizer(models.WordLevel(vocab=dict(self.ids), unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(_PIECE.pattern, behavior="isolated")
        tokenizer.decoder = decoders.ByteLevel()
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")
        fast.save_pretrained(str(folder))
        return folder


def chat(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


@dataclass
class DemoRun:
    folder: Path
    url: str
    tokenizer: Path
    vocab: Vocab
    known: dict[str, str] = field(default_factory=dict)
    """Ids of rollouts/spans the tests check (``solved``, ``solved_step``, ``no_ids``, ``retried``, ``context``)."""
    rewards: dict[str, float] = field(default_factory=dict)
    metrics_steps: int = 0


PROBLEMS = [(12, 7), (9, 8)]
ANSWERS = {0: [84, 84, 80, 84], 1: [72, 71, 72, 72]}  # what each of the 4 rollouts of a group answers


def _span(
    rollout_id: str,
    attempt_id: str,
    trace: str,
    seq: int,
    name: str,
    kind: str,
    start: float,
    end: float,
    parent: str | None,
    attributes: dict[str, object],
    span_id: str | None = None,
) -> Span:
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=trace,
        span_id=span_id or new_span_id(),
        parent_id=parent,
        name=name,
        kind=kind,
        attributes=attributes,
        start_time=start,
        end_time=end,
        status=SpanStatus(code="ok"),
    )


def _llm_attributes(
    vocab: Vocab,
    prompt: str,
    completion: str,
    messages: list[dict[str, object]],
    output: dict[str, object],
    resources_id: str,
    token_ids: bool = True,
) -> dict[str, object]:
    attributes: dict[str, object] = {
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_REQUEST_MODEL: "policy",
        semconv.GEN_AI_RESPONSE_MODEL: "policy",
        semconv.GEN_AI_INPUT_MESSAGES: messages,
        semconv.GEN_AI_OUTPUT_MESSAGES: [output],
        semconv.GEN_AI_RESPONSE_FINISH_REASONS: ["stop"],
        semconv.LATENCY_MS: 412.5,
        semconv.RESOURCES_ID: resources_id,
    }
    prompt_ids, completion_ids = vocab.encode(prompt), vocab.encode(completion)
    attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = len(prompt_ids)
    attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = len(completion_ids)
    if token_ids:
        attributes[semconv.PROMPT_TOKEN_IDS] = prompt_ids
        attributes[semconv.COMPLETION_TOKEN_IDS] = completion_ids
        attributes[semconv.COMPLETION_LOGPROBS] = [-0.25] * len(completion_ids)
        attributes[semconv.TOKEN_IDS_AVAILABLE] = True
    else:
        attributes[semconv.TOKEN_IDS_AVAILABLE] = False
    return attributes


def agent_spans(
    vocab: Vocab,
    rollout_id: str,
    attempt_id: str,
    a: int,
    b: int,
    answer: int,
    resources_id: str,
    t0: float,
    token_ids: bool = True,
) -> tuple[list[Span], str, float]:
    """The spans of one calculator-agent attempt; returns them, the agent step's id and the reward."""
    trace = new_trace_id()
    question = f"What is {a} * {b}?"
    root = _span(
        rollout_id,
        attempt_id,
        trace,
        1,
        "calc_agent",
        "agent",
        t0,
        t0 + 1.0,
        None,
        {
            semconv.GEN_AI_OPERATION_NAME: "invoke_agent",
            semconv.RESOURCES_ID: resources_id,
            semconv.AGENT_NAME: "calculator",
        },
    )
    step = _span(rollout_id, attempt_id, trace, 2, "agent_step", "agent", t0 + 0.01, t0 + 0.9, root.span_id, {})
    prompt1 = chat("system", SYSTEM) + chat("user", question) + "<|im_start|>assistant\n"
    completion1 = f'<tool_call> {{"expression": "{a}*{b}"}} </tool_call><|im_end|>'
    messages1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "calculator", "arguments": f'{{"expression": "{a}*{b}"}}'},
    }
    output1 = {"role": "assistant", "content": None, "tool_calls": [call]}
    llm1 = _span(
        rollout_id,
        attempt_id,
        trace,
        3,
        "chat policy",
        "llm",
        t0 + 0.02,
        t0 + 0.45,
        step.span_id,
        _llm_attributes(vocab, prompt1, completion1, messages1, output1, resources_id, token_ids),
    )
    tool = _span(
        rollout_id,
        attempt_id,
        trace,
        4,
        "execute_tool calculator",
        "tool",
        t0 + 0.46,
        t0 + 0.48,
        step.span_id,
        {
            semconv.GEN_AI_TOOL_NAME: "calculator",
            semconv.GEN_AI_TOOL_CALL_ID: "call_1",
            semconv.GEN_AI_TOOL_CALL_ARGUMENTS: {"expression": f"{a}*{b}"},
            semconv.GEN_AI_TOOL_CALL_RESULT: str(a * b),
        },
    )
    prompt2 = prompt1 + completion1 + "\n" + chat("tool", f"RESULT {a * b}") + "<|im_start|>assistant\n"
    completion2 = f"ANSWER: {answer}<|im_end|>"
    messages2 = [*messages1, output1, {"role": "tool", "tool_call_id": "call_1", "content": f"RESULT {a * b}"}]
    llm2 = _span(
        rollout_id,
        attempt_id,
        trace,
        5,
        "chat policy",
        "llm",
        t0 + 0.5,
        t0 + 0.85,
        step.span_id,
        _llm_attributes(
            vocab,
            prompt2,
            completion2,
            messages2,
            {"role": "assistant", "content": f"ANSWER: {answer}"},
            resources_id,
            token_ids,
        ),
    )
    reward = 1.0 if answer == a * b else 0.0
    reward_span = _span(
        rollout_id,
        attempt_id,
        trace,
        6,
        "reward",
        "reward",
        t0 + 0.95,
        t0 + 0.95,
        step.span_id,
        {semconv.REWARD_VALUE: reward, semconv.REWARD_TARGET_SPAN_ID: step.span_id},
    )
    return [root, step, llm1, tool, llm2, reward_span], step.span_id, reward


async def _fill(run: DemoRun, t0: float) -> None:
    store = open_store(run.url)
    try:
        v1 = await store.add_resources(
            {
                "policy": LLM(endpoint="http://127.0.0.1:9/v1", model="policy"),
                "system": PromptTemplate(template=SYSTEM),
            },
            metadata={"iteration": 0},
        )
        v2 = await store.add_resources(
            {
                "policy": LLM(endpoint="http://127.0.0.1:9/v1", model="policy"),
                "system": PromptTemplate(template=SYSTEM),
            },
            metadata={"iteration": 1},
        )
        await store.subscribe("trainer", task_types=["calc"])  # as the algorithm's learner does
        for group, (a, b) in enumerate(PROBLEMS):
            snapshot = v1 if group == 0 else v2
            requests = [
                RolloutRequest(
                    input={"question": f"What is {a} * {b}?", "answer": a * b},
                    task_type="calc",
                    resources_id=snapshot.resources_id,
                )
                for _ in range(4)
            ]
            rollouts = await store.enqueue_rollouts(requests)
            for n, rollout in enumerate(rollouts):
                claimed = await store.claim_rollout(f"runner-{n % 2}")
                assert claimed is not None and claimed.rollout_id == rollout.rollout_id
                start = t0 + 10 * group + 2 * n
                spans, step_id, reward = agent_spans(
                    run.vocab,
                    rollout.rollout_id,
                    claimed.attempt_id,
                    a,
                    b,
                    ANSWERS[group][n],
                    snapshot.resources_id,
                    start,
                )
                if group == 1 and n == 3:  # the retried rollout: a first attempt that failed
                    await store.add_spans(spans[:2])
                    await store.complete_attempt(rollout.rollout_id, claimed.attempt_id, "failed", "RuntimeError: boom")
                    run.known["retried"] = rollout.rollout_id
                    claimed = await store.claim_rollout("runner-1")
                    assert claimed is not None
                    spans, step_id, reward = agent_spans(
                        run.vocab,
                        rollout.rollout_id,
                        claimed.attempt_id,
                        a,
                        b,
                        ANSWERS[group][n],
                        snapshot.resources_id,
                        start + 1,
                    )
                await store.add_spans(spans)
                await store.complete_attempt(rollout.rollout_id, claimed.attempt_id, "succeeded")
                run.rewards[rollout.rollout_id] = reward
                if group == 0 and n == 0:
                    run.known["solved"] = rollout.rollout_id
                    run.known["solved_step"] = step_id
                    run.known["solved_llm2"] = spans[4].span_id
        # a rollout whose LLM calls did not go through the proxy: no token ids
        (rollout,) = await store.enqueue_rollouts(
            [RolloutRequest(input={"question": "What is 3 * 3?"}, task_type="calc")]
        )
        claimed = await store.claim_rollout("runner-0")
        assert claimed is not None
        spans, _, _ = agent_spans(
            run.vocab, rollout.rollout_id, claimed.attempt_id, 3, 3, 9, v2.resources_id, t0 + 30, token_ids=False
        )
        await store.add_spans(spans)
        await store.complete_attempt(rollout.rollout_id, claimed.attempt_id, "succeeded")
        run.known["no_ids"] = rollout.rollout_id
        # queued and running work
        await store.enqueue_rollouts([RolloutRequest(input={"question": str(i)}, task_type="calc") for i in range(3)])
        await store.enqueue_rollouts([RolloutRequest(input={"query": str(i)}, task_type="search") for i in range(2)])
        running = await store.claim_rollout("runner-0", task_types=["search"])
        assert running is not None
        run.known["running"] = running.rollout_id
        # the learner has taken 4 finished rollouts and not acknowledged them yet; a late group replays all
        await store.pull_completed("trainer", max_count=4, visibility_timeout=24 * 3600)
        await store.subscribe("archive", from_beginning=True)
    finally:
        await store.close()


def build_demo_run(folder: Path) -> DemoRun:
    """Fill ``folder/store.db`` and ``folder/metrics.jsonl``; save the tokenizer in ``folder/tokenizer``."""
    import time

    folder.mkdir(parents=True, exist_ok=True)
    vocab = Vocab()
    run = DemoRun(folder=folder, url=f"sqlite:///{folder / 'store.db'}", tokenizer=folder / "tokenizer", vocab=vocab)
    asyncio.run(_fill(run, time.time() - 100))
    # one rollout recorded through the instrumentation API, as an agent script would
    with agl.TrainingContext(task_id="calc", input={"question": "What is 2 + 2?"}, store=run.url) as ctx:
        with agl.span("agent_step") as step:
            with agl.tool_call("calculator", {"expression": "2+2"}):
                pass
        agl.emit_reward(1.0, span_id=step.id)
    run.known["context"] = ctx.rollout_id
    vocab.save(run.tokenizer)
    metrics = MetricsLogger(folder, tensorboard=False)
    rewards = [0.39, 0.46, 0.66, 0.74, 0.66, 0.66]
    for step_index, reward in enumerate(rewards, start=1):
        values = {"train/reward_mean": reward, "train/kl": 0.01 * step_index, "perf/tokens_per_s": 300.0 + step_index}
        if step_index % 2 == 0:
            values["eval/accuracy"] = 0.5 + 0.05 * step_index
        metrics.log(step_index, values)
    metrics.close()
    run.metrics_steps = len(rewards)
    return run
