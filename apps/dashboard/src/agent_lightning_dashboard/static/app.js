// Agent Lightning dashboard: hand-written, no dependencies, every URL relative (the app may be mounted under a path).
"use strict";

const main = document.getElementById("main");
let timer = null; // the current page's poll

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

async function api(path) {
  const response = await fetch("api/" + path, { credentials: "same-origin" });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const fmt = {
  num: (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d).replace(/\.?0+$/, "") || "0"),
  secs: (v) => (v === null || v === undefined ? "–" : v < 1 ? (v * 1000).toFixed(0) + " ms" : v.toFixed(2) + " s"),
  time: (t) => (t ? new Date(t * 1000).toLocaleString() : "–"),
  short: (id) => (id && id.length > 14 ? id.slice(0, 14) + "…" : id || "–"),
};

function status(s) { return h("span", { class: "status " + s }, s); }
function kind(k) { return h("span", { class: "kind " + k }, k); }

function parseHash() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || "") };
}

function go(path, params) {
  const q = params ? params.toString() : "";
  location.hash = "#/" + path + (q ? "?" + q : "");
}

async function route() {
  if (timer) { clearInterval(timer); timer = null; }
  const { parts, params } = parseHash();
  const page = parts[0] || "rollouts";
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page || (page === "rollout" && a.dataset.nav === "rollouts")));
  try {
    if (page === "rollouts") await rolloutsPage(params);
    else if (page === "rollout" && parts[2] === "training") await trainingPage(parts[1], params);
    else if (page === "rollout") await rolloutPage(parts[1], params);
    else if (page === "runs") await runsPage(params);
    else if (page === "queues") await queuesPage();
    else main.replaceChildren(h("p", { class: "error" }, "No such page: " + location.hash));
  } catch (err) {
    main.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
  }
}

// ------------------------------------------------------------------ rollouts list
const STATUSES = ["queuing", "running", "requeuing", "succeeded", "failed", "cancelled"];

async function rolloutsPage(params) {
  const query = new URLSearchParams(params);
  query.set("size", params.get("size") || "50");
  const data = await api("rollouts?" + query.toString());
  const select = (name, options) =>
    h("select", { name, onchange: (e) => { params.set(name, e.target.value); params.delete("page"); if (!e.target.value) params.delete(name); go("rollouts", params); } },
      h("option", { value: "" }, "any " + name.replace("_", " ")),
      options.map((o) => h("option", { value: o, selected: params.get(name) === o }, o)));
  const page = data.page;
  const nav = (p) => { params.set("page", p); go("rollouts", params); };
  const pager = h("div", { class: "pager" },
    h("button", { disabled: page <= 0, onclick: () => nav(page - 1) }, "‹ newer"),
    h("span", { id: "page-info" }, `page ${page + 1} of ${data.pages} · ${data.total.toLocaleString()} rollouts`),
    h("button", { disabled: page + 1 >= data.pages, onclick: () => nav(page + 1) }, "older ›"),
    h("span", { class: "muted" }, `server ${data.server_ms} ms`));
  const rows = data.items.map((r) =>
    h("tr", { "data-rollout": r.rollout_id },
      h("td", {}, h("a", { href: "#/rollout/" + encodeURIComponent(r.rollout_id) }, fmt.short(r.rollout_id))),
      h("td", {}, status(r.status)),
      h("td", {}, r.task_type), h("td", {}, r.mode),
      h("td", { class: "num" }, `${r.attempts}/${r.max_attempts}`),
      h("td", { class: "num reward" }, fmt.num(r.reward)),
      h("td", { class: "num" }, fmt.secs(r.duration)),
      h("td", { class: "num" }, r.resources_version === null ? "–" : "v" + r.resources_version),
      h("td", {}, r.worker || "–"),
      h("td", { class: "muted" }, fmt.time(r.created_at)),
      h("td", { class: "error", title: r.error || "" }, r.error ? r.error.slice(0, 40) : "")));
  main.replaceChildren(
    h("h2", {}, "Rollouts"),
    h("div", { class: "filters" }, select("status", STATUSES), select("task_type", data.task_types), select("mode", ["train", "val", "test"])),
    pager,
    h("table", { id: "rollouts" },
      h("thead", {}, h("tr", {}, ["rollout", "status", "task type", "mode", "attempts", "reward", "duration", "resources", "worker", "created", "error"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
}

// ------------------------------------------------------------------ one rollout: the span timeline
function messageView(m) {
  if (!m || typeof m !== "object") return h("div", { class: "msg" }, JSON.stringify(m));
  const content = typeof m.content === "string" ? m.content : m.content == null ? "" : JSON.stringify(m.content);
  const calls = (m.tool_calls || []).map((c) => {
    const fn = c.function || c;
    return h("div", { class: "toolcall" }, "→ tool call ", h("b", {}, fn.name || "?"), " ", typeof fn.arguments === "string" ? fn.arguments : JSON.stringify(fn.arguments));
  });
  return h("div", { class: "msg " + (m.role || "") }, h("span", { class: "role" }, (m.role || "?") + ": "), content, calls);
}

function spanDetails(s) {
  const parts = [h("h3", {}, s.name, " ", kind(s.kind))];
  if (s.kind === "llm") {
    parts.push(h("div", {}, `model ${s.model || "?"} · ${s.input_tokens ?? "?"} prompt + ${s.output_tokens ?? "?"} completion tokens · latency ${s.latency_ms ?? "?"} ms · token ids ${s.token_ids ? "recorded" : "missing"}`));
    (s.input_messages || []).forEach((m) => parts.push(messageView(m)));
    (s.output_messages || []).forEach((m) => parts.push(messageView({ role: "assistant", ...m })));
  }
  if (s.kind === "tool") parts.push(h("div", { class: "toolcall" }, `${s.tool_name}(${JSON.stringify(s.tool_arguments)}) → ${JSON.stringify(s.tool_result)}`));
  if (s.status_message) parts.push(h("div", { class: "error" }, s.status_message));
  parts.push(h("details", {}, h("summary", {}, "attributes"), h("pre", {}, JSON.stringify(s.attributes, null, 1))));
  return h("div", { class: "card", id: "span-details" }, parts);
}

function tabs(id, active) {
  const base = "#/rollout/" + encodeURIComponent(id);
  return h("div", { class: "tabs" },
    h("a", { href: base, class: active === "trace" ? "active" : "" }, "Trace"),
    h("a", { href: base + "/training", class: active === "training" ? "active" : "" }, "Training view"));
}

async function rolloutPage(id, params) {
  const attempt = params.get("attempt");
  const data = await api("rollouts/" + encodeURIComponent(id) + (attempt ? "?attempt=" + encodeURIComponent(attempt) : ""));
  const r = data.rollout;
  const spans = data.spans;
  const total = Math.max(1e-6, ...spans.map((s) => s.start + (s.duration || 0)));
  const detail = h("div", {});
  const rows = spans.map((s) => {
    const left = (100 * s.start) / total, width = (100 * (s.duration || 0)) / total;
    const tr = h("tr", { "data-span": s.span_id, "data-kind": s.kind, onclick: () => {
      main.querySelectorAll("tr.selected").forEach((x) => x.classList.remove("selected"));
      tr.classList.add("selected");
      detail.replaceChildren(spanDetails(s));
    } },
      h("td", { class: "name", style: `padding-left:${8 + 16 * s.depth}px` }, s.name, " ", kind(s.kind),
        s.rewards.map((v) => h("span", { class: "reward-badge", title: "reward judging this span" }, "reward " + fmt.num(v))),
        s.kind === "reward" ? h("span", { class: "muted" }, ` ${fmt.num(s.reward)} → ${s.reward_target ? fmt.short(s.reward_target) : "attempt"}`) : null),
      h("td", {}, h("div", { class: "track" }, h("div", { class: "bar " + s.kind, style: `left:${left}%;width:${width}%` }))),
      h("td", { class: "num" }, fmt.secs(s.duration)),
      h("td", { class: "num" }, s.kind === "llm" ? `${s.input_tokens ?? "?"}+${s.output_tokens ?? "?"} tok` : ""),
      h("td", {}, s.status === "error" ? h("span", { class: "error" }, "error") : ""));
    return tr;
  });
  const llm = spans.filter((s) => s.kind === "llm");
  main.replaceChildren(
    h("h2", {}, "Rollout ", h("code", {}, r.rollout_id), " ", status(r.status)),
    tabs(id, "trace"),
    h("div", { class: "card" },
      `task type ${r.task_type} · mode ${r.mode} · reward ${fmt.num(data.reward)} · resources ${data.resources_version ? "v" + data.resources_version : "–"} · created ${fmt.time(r.created_at)}`,
      r.error ? h("div", { class: "error" }, r.error) : null,
      h("details", {}, h("summary", {}, "input"), h("pre", {}, JSON.stringify(r.input, null, 1)))),
    h("h3", {}, "Attempts"),
    h("table", { id: "attempts" },
      h("thead", {}, h("tr", {}, ["#", "attempt", "status", "worker", "duration", "error"].map((c) => h("th", {}, c)))),
      h("tbody", {}, data.attempts.map((a) => h("tr", { class: a.attempt_id === data.attempt_id ? "selected" : "" },
        h("td", {}, a.sequence),
        h("td", {}, h("a", { href: `#/rollout/${encodeURIComponent(id)}?attempt=${encodeURIComponent(a.attempt_id)}` }, fmt.short(a.attempt_id))),
        h("td", {}, status(a.status)), h("td", {}, a.worker_id || "–"),
        h("td", { class: "num" }, fmt.secs(a.ended_at ? a.ended_at - a.started_at : null)),
        h("td", { class: "error" }, a.error || ""))))),
    h("h3", {}, `Span timeline (${spans.length} spans, ${fmt.secs(total)})`),
    h("table", { class: "timeline", id: "timeline" }, h("tbody", {}, rows)),
    detail,
    h("h3", {}, `LLM calls (${llm.length})`),
    h("div", { id: "llm-calls" }, llm.map((s) => h("div", { class: "card llm-call", "data-span": s.span_id },
      h("div", {}, h("b", {}, s.name), ` · ${s.input_tokens ?? "?"} prompt + ${s.output_tokens ?? "?"} completion tokens · ${s.latency_ms ?? "?"} ms`,
        s.rewards.map((v) => h("span", { class: "reward-badge" }, "reward " + fmt.num(v)))),
      (s.input_messages || []).slice(-3).map(messageView),
      (s.output_messages || []).map((m) => messageView({ role: "assistant", ...m }))))));
}

// ------------------------------------------------------------------ the training view
function tokenText(t, showIds) {
  if (showIds || t.text === null) return String(t.id) + " ";
  return t.text.replace(/\n/g, "⏎\n");
}

async function trainingPage(id, params) {
  const aggregation = params.get("aggregation") || "transition";
  const showIds = params.get("ids") === "1";
  const data = await api(`rollouts/${encodeURIComponent(id)}/training?aggregation=${aggregation}`);
  const toggle = (name, value) => { params.set(name, value); go(`rollout/${encodeURIComponent(id)}/training`, params); };
  const top = [];
  if (data.no_training_data) top.push(h("div", { class: "ntd", id: "no-training-data" }, "NoTrainingData: " + data.no_training_data));
  if (data.warnings.length) top.push(h("div", { class: "warnings", id: "warnings" }, h("b", {}, "build_episode warnings"), h("ul", {}, data.warnings.map((w) => h("li", {}, w)))));
  if (data.tokenizer_error) top.push(h("div", { class: "warnings" }, data.tokenizer_error));
  const samples = data.samples.map((s, n) => {
    const adv = s.advantage;
    return h("div", { class: "card sample", "data-sample": n, "data-spans": s.span_ids.join(",") },
      h("div", {}, h("b", {}, `sample ${n + 1}`), ` · turn ${s.turn_index} · spans ${s.span_ids.map(fmt.short).join(", ")} · return `,
        h("b", { class: "sample-reward" }, fmt.num(s.reward)), " · advantage ", h("b", { class: "sample-advantage" }, adv === null ? "–" : fmt.num(adv)),
        ` · ${s.trainable_tokens} of ${s.completion.length} completion tokens trained`, s.agent_name ? ` · agent ${s.agent_name}` : ""),
      h("details", {}, h("summary", {}, `prompt (${s.prompt.length} tokens, context: no loss)`),
        h("div", { class: "tokens" }, s.prompt.map((t) => h("span", { class: "tok prompt", title: `id ${t.id}` }, tokenText(t, showIds))))),
      h("div", { class: "tokens completion" }, s.completion.map((t) => h("span", {
        class: "tok " + (t.trained ? "trained" : "masked"),
        "data-id": t.id,
        title: `id ${t.id}` + (t.trained ? ` · trained · return ${fmt.num(s.reward)} · advantage ${adv === null ? "–" : fmt.num(adv)}` : " · masked (no loss)") + (t.logprob === null ? "" : ` · logprob ${fmt.num(t.logprob)}`),
      }, tokenText(t, showIds)))));
  });
  main.replaceChildren(
    h("h2", {}, "Training view of ", h("code", {}, data.rollout_id)),
    tabs(id, "training"),
    ...top,
    h("div", { class: "card" },
      `episode reward ${fmt.num(data.reward)} · attempt ${fmt.short(data.attempt_id)} · ${data.samples.length} sample(s) · GRPO group of ${data.group.rollouts} finished rollout(s)` + (data.group.indexed_all ? "" : " (still indexing)") + ` · tokens ${data.tokenizer ? "decoded with " + data.tokenizer : "shown as ids (start with --tokenizer PATH to decode)"}`,
      h("div", {}, "aggregation ",
        h("select", { onchange: (e) => toggle("aggregation", e.target.value) }, ["transition", "trajectory"].map((a) => h("option", { value: a, selected: a === aggregation }, a))),
        " ", h("label", {}, h("input", { type: "checkbox", checked: showIds, onchange: (e) => toggle("ids", e.target.checked ? "1" : "0") }), " show ids")),
      h("div", { class: "legend" }, h("span", { class: "tok trained" }, "trained token"), h("span", { class: "tok masked" }, "masked token (tool output, no loss)"), h("span", { class: "muted" }, "hover a token for its id, return, advantage, logprob"))),
    ...(samples.length ? samples : [h("p", { class: "muted" }, "No samples: the trainer would skip this rollout.")]));
}

// ------------------------------------------------------------------ training runs: metrics and resources
const CHARTS = [
  ["reward", (k) => k === "train/reward_mean" || /reward/.test(k) && !/std/.test(k)],
  ["validation accuracy", (k) => k === "eval/accuracy" || /^(val|eval)\//.test(k) && /(acc|success)/.test(k)],
  ["KL", (k) => /(^|\/)(policy_)?kl$/.test(k)],
  ["tokens/s", (k) => /tokens_per_s/.test(k)],
];

function chart(title, key, records) {
  const pts = records.filter((r) => key in r).map((r) => [r.step ?? 0, r[key]]);
  const W = 380, H = 170, L = 44, R = 8, T = 8, B = 22;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (y1 === y0 ? 0.5 : 1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, "data-key": key, "data-points": pts.length },
    svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#d1d5db" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#d1d5db" }));
  if (pts.length) {
    plot.append(svg("text", { x: 2, y: T + 8 }, fmt.num(y1)), svg("text", { x: 2, y: H - B }, fmt.num(y0)),
      svg("text", { x: L, y: H - 6 }, "step " + x0), svg("text", { x: W - R - 50, y: H - 6 }, "step " + x1),
      svg("polyline", { points: pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" ") }));
    pts.forEach((p) => plot.append(svg("circle", { class: "pt", cx: sx(p[0]), cy: sy(p[1]), r: 2.5 }, svg("title", {}, `step ${p[0]}: ${p[1]}`))));
  }
  return h("div", { class: "chart" }, h("div", { class: "title" }, title, " ", h("span", { class: "muted" }, key)), plot);
}

async function runsPage(params) {
  const data = await api("runs");
  const name = params.get("run") || (data.runs[0] && data.runs[0].name);
  const charts = h("div", { class: "charts", id: "charts" });
  const extra = h("select", { id: "extra-metric" });
  const extraChart = h("div", { class: "charts" });
  let records = [], offset = 0;
  const draw = () => {
    const keys = [...new Set(records.flatMap((r) => Object.keys(r)))].filter((k) => k !== "step" && k !== "time").sort();
    const shown = [];
    charts.replaceChildren(...CHARTS.map(([title, match]) => {
      const key = keys.find((k) => k === "train/reward_mean" && title === "reward") || keys.find(match);
      if (!key) return h("div", { class: "chart muted" }, title + ": not logged by this run");
      shown.push(key);
      return chart(title, key, records);
    }));
    const current = extra.value;
    extra.replaceChildren(h("option", { value: "" }, "another metric…"), ...keys.filter((k) => !shown.includes(k)).map((k) => h("option", { value: k, selected: k === current }, k)));
    extraChart.replaceChildren(extra.value ? chart(extra.value, extra.value, records) : "");
  };
  extra.addEventListener("change", draw);
  const poll = async () => {
    if (!name) return;
    const update = await api(`runs/${encodeURIComponent(name)}/metrics?offset=${offset}`);
    if (update.reset) records = [];
    records = records.concat(update.records);
    const changed = update.offset !== offset || update.reset;
    offset = update.offset;
    if (changed) draw();
    status_.textContent = `${records.length} records · polled ${new Date().toLocaleTimeString()}`;
  };
  const status_ = h("span", { class: "muted", id: "poll-status" });
  const versions = data.resources.map((v) => h("tr", { "data-version": v.version },
    h("td", {}, "v" + v.version), h("td", {}, h("code", {}, fmt.short(v.resources_id))), h("td", { class: "muted" }, fmt.time(v.created_at)),
    h("td", {}, Object.entries(v.resources).map(([n, r]) => h("div", {}, h("b", {}, n), ` (${r.resource_type}) `,
      r.resource_type === "prompt_template" ? h("code", { class: "candidate" }, r.template.slice(0, 120)) : r.resource_type === "llm" ? r.model : ""))),
    h("td", { class: "num produced" }, Object.values(v.rollouts).reduce((a, b) => a + b, 0)),
    h("td", {}, Object.entries(v.rollouts).map(([s, n]) => h("span", { class: "status " + s, style: "margin-right:4px" }, `${s} ${n}`)))));
  main.replaceChildren(
    h("h2", {}, "Training runs"),
    data.runs.length
      ? h("div", { class: "filters" }, "run ", h("select", { onchange: (e) => { params.set("run", e.target.value); go("runs", params); } },
          data.runs.map((r) => h("option", { value: r.name, selected: r.name === name }, r.name))), status_)
      : h("p", { class: "muted" }, "No metrics.jsonl found (pass --metrics DIR)."),
    charts, h("div", { class: "filters" }, extra), extraChart,
    h("h3", {}, "Resources versions and the finished rollouts each produced"),
    h("p", { class: "muted" }, `${data.indexed_rollouts.toLocaleString()} finished rollouts indexed` + (data.index_complete ? "" : " so far (reload for more)")),
    h("table", { id: "resources" }, h("thead", {}, h("tr", {}, ["version", "id", "created", "resources (APO candidates: prompt templates)", "rollouts", "by status"].map((c) => h("th", {}, c)))), h("tbody", {}, versions)));
  await poll();
  timer = setInterval(() => poll().catch(() => {}), 2000);
}

// ------------------------------------------------------------------ queues
async function queuesPage() {
  const data = await api("queues");
  main.replaceChildren(
    h("h2", {}, "Queues"),
    h("div", { class: "filters", id: "totals" }, Object.entries(data.totals).map(([s, n]) => h("span", { class: "status " + s }, `${s} ${n.toLocaleString()}`))),
    h("table", { id: "queues" },
      h("thead", {}, h("tr", {}, ["task type", "queuing", "requeuing", "running", "queue depth"].map((c) => h("th", {}, c)))),
      h("tbody", {}, data.rows.map((r) => h("tr", { "data-task-type": r.task_type ?? "*" },
        h("td", {}, r.task_type === null ? h("b", {}, "all task types") : r.task_type),
        h("td", { class: "num" }, r.queuing), h("td", { class: "num" }, r.requeuing), h("td", { class: "num" }, r.running),
        h("td", { class: "num depth" }, h("b", {}, r.depth)))))),
    h("h3", {}, "Subscription groups (finished rollouts for learners)"),
    data.subscription_groups.length
      ? h("table", { id: "subscriptions" },
          h("thead", {}, h("tr", {}, ["group", "task types", "pending", "delivered, not acknowledged", "backlog"].map((c) => h("th", {}, c)))),
          h("tbody", {}, data.subscription_groups.map((g) => h("tr", { "data-group": g.group },
            h("td", {}, g.group), h("td", {}, g.task_types === null ? h("i", {}, "all") : g.task_types.join(", ")),
            h("td", { class: "num pending" }, g.pending.toLocaleString()), h("td", { class: "num delivered" }, g.delivered.toLocaleString()),
            h("td", { class: "num backlog" }, h("b", {}, (g.pending + g.delivered).toLocaleString()))))))
      : h("p", { class: "muted" }, "No subscription group."),
    h("p", { class: "muted" }, `server ${data.server_ms} ms`));
  if (!timer) timer = setInterval(() => { if (parseHash().parts[0] === "queues") queuesPage().catch(() => {}); }, 5000);
}

api("info").then((i) => { document.getElementById("store").textContent = i.store; }).catch(() => {});
window.addEventListener("hashchange", route);
route();
