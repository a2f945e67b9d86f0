/**
 * `moec view`'s page: one self-contained HTML document (inline styles, SVG and script; nothing
 * fetched at view time) from the model view, routing data and training curves. Pure: data in,
 * markup out. Element classes and data attributes are what the tests count.
 */
import type { MoeRecord } from "../../compiler/check/primitive-rule.js";
import type { MetricsView } from "./metrics-data.js";
import type { ModelView, ViewBox } from "./model-view.js";
import { type RoutingLayer, expertCount } from "./routing-data.js";
import { esc, heat, lineChart, num, shortCount } from "./svg.js";

export interface PageInput {
  model: ModelView;
  routing?: RoutingLayer[];
  metrics?: MetricsView;
  /** How a source file is shown (relative to the working directory). */
  displayPath?: (file: string) => string;
  /** Link boxes to `vscode://file/...` (default) or `file://...`. */
  links?: "vscode" | "file";
  /** Where the routing and metrics came from, shown under their headings. */
  sources?: { stats?: string; trace?: string; metrics?: string };
  /** Tokens drawn per layer in the trace grid (the rest are summarised). */
  maxTraceTokens?: number;
}

export function renderPage(input: PageInput): string {
  const { model } = input;
  const show = input.displayPath ?? ((f: string) => f);
  const r = model.report;
  const moeByPath = new Map(model.moes.map((m) => [m.path, m]));
  const routingLayers = new Set((input.routing ?? []).map((l) => l.layer));
  const ctx: BoxContext = { show, links: input.links ?? "vscode", routingLayers };
  const sections: string[] = [];
  sections.push(`<section id="model"><h2>Model</h2>
<p class="summary">${esc(shortCount(r.total))} parameters (${esc(r.total.toLocaleString("en-US"))}), ${esc(shortCount(r.activePerToken))} active per token${r.frozen > 0 ? `, ${esc(shortCount(r.frozen))} frozen` : ""}${model.moes.length > 0 ? `; ${model.moes.length} MoE layer${model.moes.length === 1 ? "" : "s"}` : ""}${r.perTask.length > 0 ? `; per task: ${r.perTask.map((t) => `${esc(t.task)} +${esc(shortCount(t.params))}`).join(", ")}` : ""}.
<button type="button" id="expand-all">expand all</button> <button type="button" id="collapse-all">collapse all</button></p>
<div class="diagram">${renderBox(model.root, ctx, 0)}</div></section>`);
  if (input.routing) {
    const from = [input.sources?.stats, input.sources?.trace].filter((s) => s !== undefined);
    sections.push(`<section id="routing"><h2>Routing</h2>${from.length ? `<p class="from">from ${from.map((f) => esc(f)).join(" and ")}</p>` : ""}
${input.routing.length === 0 ? `<p>No MoE layer in the routing data.</p>` : input.routing.map((l) => renderRoutingLayer(l, moeByPath.get(l.layer), input.maxTraceTokens ?? 256)).join("\n")}</section>`);
  }
  if (input.metrics) {
    const m = input.metrics;
    sections.push(`<section id="training"><h2>Training</h2><p class="from">${input.sources?.metrics ? `from ${esc(input.sources.metrics)}: ` : ""}${m.steps} step lines, ${m.evals} evaluation lines${m.skipped ? `, ${m.skipped} unreadable line${m.skipped === 1 ? "" : "s"} skipped` : ""}</p>
<div class="charts">${m.charts.map((c) => lineChart(c.title, c.series)).join("\n")}</div>
${m.shares.map((s) => shareOverSteps(s)).join("\n")}</section>`);
  }
  const nav = [
    `<a href="#model">model</a>`,
    input.routing ? `<a href="#routing">routing</a>` : "",
    input.metrics ? `<a href="#training">training</a>` : "",
  ]
    .filter(Boolean)
    .join(" · ");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>moec view: ${esc(model.name)}</title><style>${STYLE}</style></head>
<body><header><h1>${esc(model.name)}</h1><div class="meta">${esc(show(model.file))} · <nav>${nav}</nav></div></header>
${sections.join("\n")}
<script>${SCRIPT}</script></body></html>
`;
}

interface BoxContext {
  show: (file: string) => string;
  links: "vscode" | "file";
  routingLayers: Set<string>;
}

function href(ctx: BoxContext, src: NonNullable<ViewBox["source"]>): string {
  const p = src.file.split("/").map(encodeURIComponent).join("/");
  return ctx.links === "vscode"
    ? `vscode://file${p}:${src.line}:${src.column}`
    : `file://${p}#L${src.line}`;
}

function routerLabel(m: MoeRecord): string {
  const per = m.activePerToken === m.experts.length ? "all" : `${num(m.activePerToken)} per token`;
  return `${m.router} router · ${m.experts.length} experts, ${per}`;
}

function renderBox(box: ViewBox, ctx: BoxContext, depth: number): string {
  const params =
    box.total === 0
      ? `<span class="params">no parameters</span>`
      : `<span class="params" title="${esc(box.total.toLocaleString("en-US"))} parameters, ${esc(box.active.toLocaleString("en-US"))} used per token">${esc(shortCount(box.total))}${box.active !== box.total ? ` · ${esc(shortCount(box.active))} active` : ""}</span>`;
  const src = box.source
    ? `<a class="src" href="${esc(href(ctx, box.source))}" data-file="${esc(box.source.file)}" data-line="${box.source.line}" data-column="${box.source.column}" title="${esc(box.source.file)}:${box.source.line}">${esc(ctx.show(box.source.file))}:${box.source.line}</a>`
    : "";
  const attrs = `data-path="${esc(box.path)}" data-kind="${box.kind}" data-role="${box.role}" data-total="${box.total}" data-active="${box.active}"${box.count !== undefined ? ` data-count="${box.count}"` : ""}${box.task !== undefined ? ` data-task="${esc(box.task)}"` : ""}`;
  const inner = box.children.map((c) => renderBox(c, ctx, depth + 1)).join("");
  if (box.kind !== "component") {
    const label =
      box.kind === "per-task"
        ? `${esc(box.name)} <span class="badge task">per task ×${box.children.length}</span>`
        : `${esc(box.name)} <span class="badge count">×${box.count}</span>${box.role === "expert" ? ` <span class="badge expert">experts</span>` : box.role === "shared" ? ` <span class="badge shared">shared experts: every token</span>` : ""}`;
    // Repeat bodies start open near the top; expert stacks start closed.
    const open = box.role === "group" && depth < 3 ? " open" : "";
    return `<details class="group kind-${box.kind} role-${box.role}" ${attrs}${open}><summary><span class="name">${label}</span> ${params} ${src}</summary><div class="body">${inner}</div></details>`;
  }
  const ports = (list: ViewBox["inputs"], dir: "in" | "out") =>
    list.length === 0
      ? ""
      : `<div class="ports ${dir}">${list.map((p) => `<span class="port" title="${dir === "in" ? "input" : "output"} ${esc(p.name)}">${dir === "in" ? "▼" : "▲"} ${esc(p.name)}: ${esc(p.type)}</span>`).join("")}</div>`;
  const role =
    box.role === "router"
      ? `<span class="badge router">router</span>`
      : box.role === "moe" && box.moe
        ? `<span class="badge moe">MoE</span> <span class="router-info">${esc(routerLabel(box.moe))}</span>${ctx.routingLayers.has(box.path) ? ` <a class="to-routing" href="#routing-${esc(anchor(box.path))}">routing ↓</a>` : ""}`
        : box.role === "adapter"
          ? `<span class="badge adapter">adapter</span>`
          : box.role === "expert"
            ? `<span class="badge expert">expert</span>`
            : box.role === "shared"
              ? `<span class="badge shared">shared expert</span>`
              : "";
  const task =
    box.task !== undefined ? ` <span class="badge task">task ${esc(box.task)}</span>` : "";
  const args = box.args.length
    ? `<div class="args">${box.args.map(([k, v]) => `${esc(k)}=${esc(v)}`).join(" ")}</div>`
    : "";
  return `<div class="box role-${box.role}" ${attrs}>${ports(box.inputs, "in")}<div class="head"><span class="name">${esc(box.name)}</span> <span class="comp">${esc(box.component ?? "")}</span> ${role}${task} ${params} ${src}</div>${args}${inner ? `<div class="body">${inner}</div>` : ""}${ports(box.outputs, "out")}</div>`;
}

export function anchor(layer: string): string {
  return layer.replace(/[^A-Za-z0-9_.-]/g, "_");
}

function renderRoutingLayer(
  l: RoutingLayer,
  moe: MoeRecord | undefined,
  maxTokens: number,
): string {
  const e = expertCount(l, moe?.experts.length);
  const balanced = e > 0 ? 1 / e : 0;
  const rows: string[] = [];
  if (l.dropped !== undefined)
    rows.push(`<tr><th>dropped</th><td class="dropped">${num(l.dropped)}</td></tr>`);
  if (l.entropy !== undefined)
    rows.push(
      `<tr><th>entropy</th><td class="entropy">${num(l.entropy)} nats (uniform over ${e} experts: ${num(Math.log(Math.max(1, e)))})</td></tr>`,
    );
  if (l.balanceLoss !== undefined)
    rows.push(`<tr><th>balance loss</th><td>${num(l.balanceLoss)}</td></tr>`);
  if (l.zLoss !== undefined) rows.push(`<tr><th>z-loss</th><td>${num(l.zLoss)}</td></tr>`);
  for (const [k, v] of l.other)
    rows.push(
      `<tr><th>${esc(k.replaceAll("_", " "))}</th><td>${esc(Array.isArray(v) ? `[${v.map(num).join(", ")}]` : num(v))}</td></tr>`,
    );
  const parts: string[] = [];
  if (l.tokensPerExpert || l.share) parts.push(heatStrip(l, e, balanced));
  // Mixture of tokens: how evenly a token's mass spreads (the router's entropy when the run
  // reported it, else the entropy of the mean share, as metrics.jsonl defines it).
  if (l.entropy !== undefined && (moe?.router === "TokenMix" || (!l.tokensPerExpert && !l.share)))
    parts.push(entropyBar(l.entropy, e, "router entropy"));
  else if (l.entropy === undefined && moe?.router === "TokenMix" && l.share)
    parts.push(entropyBar(shareEntropy(l.share), e, "entropy of the mean share"));
  if (l.groupWeights) parts.push(groupBars(l.groupWeights));
  if (l.trace) parts.push(traceGrid(l, e, maxTokens));
  return `<article class="routing-layer" id="routing-${esc(anchor(l.layer))}" data-layer="${esc(l.layer)}">
<h3>${esc(l.layer)}${moe ? ` <span class="router-info">${esc(routerLabel(moe))}</span>` : ""}</h3>
${rows.length ? `<table class="stats">${rows.join("")}</table>` : ""}
${parts.join("\n")}</article>`;
}

/** Tokens per expert as a row of cells (colour by share) over bars with the balanced share marked. */
function heatStrip(l: RoutingLayer, e: number, balanced: number): string {
  const total = l.tokensPerExpert?.reduce((a, b) => a + b, 0) ?? 0;
  const share = l.share ?? l.tokensPerExpert!.map((t) => (total > 0 ? t / total : 0));
  const cw = Math.max(18, Math.min(48, Math.floor(640 / Math.max(1, e + 1))));
  const maxShare = Math.max(balanced * 2, ...share);
  const barH = 90;
  const W = (e + 1) * cw + 140;
  const H = 28 + barH + 36;
  const cells: string[] = [];
  for (let i = 0; i < e; i++) {
    const s = share[i] ?? 0;
    // A trace-derived count list ends at the last expert that got a token.
    const tokens = l.tokensPerExpert ? (l.tokensPerExpert[i] ?? 0) : undefined;
    const x = 40 + i * cw;
    const h = (s / maxShare) * barH;
    const tip = `expert ${i}: ${tokens !== undefined ? `${tokens} tokens, ` : ""}share ${(100 * s).toFixed(1)}% (balanced ${(100 * balanced).toFixed(1)}%)`;
    cells.push(
      `<g class="expert-col"><rect class="heat-cell" data-expert="${i}" data-share="${s}"${tokens !== undefined ? ` data-tokens="${tokens}"` : ""} x="${x}" y="0" width="${cw - 2}" height="24" fill="${heat(s / maxShare)}"><title>${esc(tip)}</title></rect>` +
        `<text x="${x + (cw - 2) / 2}" y="16" text-anchor="middle" class="cell-label">${tokens !== undefined ? tokens : (100 * s).toFixed(0)}</text>` +
        `<rect class="bar" x="${x}" y="${28 + barH - h}" width="${cw - 2}" height="${h}"><title>${esc(tip)}</title></rect>` +
        `<text x="${x + (cw - 2) / 2}" y="${28 + barH + 14}" text-anchor="middle" class="tick">${i}</text></g>`,
    );
  }
  const yb = 28 + barH - (balanced / maxShare) * barH;
  const dropped =
    l.dropped !== undefined
      ? `<rect class="heat-dropped" data-dropped="${l.dropped}" x="${40 + e * cw + 6}" y="0" width="${cw - 2}" height="24" fill="${l.dropped > 0 ? "#888" : "#eee"}"><title>${esc(`${l.dropped} dropped (over capacity or unchosen)`)}</title></rect><text x="${40 + e * cw + 6 + (cw - 2) / 2}" y="16" text-anchor="middle" class="cell-label">${l.dropped}</text><text x="${40 + e * cw + 6 + (cw - 2) / 2}" y="${28 + barH + 14}" text-anchor="middle" class="tick">drop</text>`
      : "";
  return `<svg class="heatmap" data-experts="${e}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="tokens per expert">
<text x="36" y="16" text-anchor="end" class="tick">${l.tokensPerExpert ? "tokens" : "share %"}</text><text x="36" y="${28 + barH / 2}" text-anchor="end" class="tick">share</text>
${cells.join("")}${dropped}
<line class="balanced" x1="38" x2="${40 + (e + 1) * cw + 6}" y1="${yb}" y2="${yb}"><title>balanced share 1/${e} = ${(100 * balanced).toFixed(1)}%</title></line>
<text x="${40 + (e + 1) * cw + 10}" y="${yb + 3}" class="tick balanced-label">balanced ${(100 * balanced).toFixed(1)}%</text>
<text x="40" y="${H - 4}" class="tick">expert</text></svg>`;
}

function groupBars(weights: readonly number[]): string {
  const w = 60;
  const H = 110;
  const W = weights.length * w + 20;
  const max = Math.max(1e-9, ...weights);
  const bars = weights
    .map((v, g) => {
      const h = (v / max) * 70;
      return `<rect class="group-bar" data-group="${g}" data-weight="${v}" x="${10 + g * w}" y="${80 - h}" width="${w - 8}" height="${h}"><title>group ${g}: ${num(v)}</title></rect><text x="${10 + g * w + (w - 8) / 2}" y="${76 - h}" text-anchor="middle" class="tick">${num(v)}</text><text x="${10 + g * w + (w - 8) / 2}" y="96" text-anchor="middle" class="tick">group ${g}</text>`;
    })
    .join("");
  return `<figure class="groups"><figcaption>group weights (mean over tokens)</figcaption><svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">${bars}</svg></figure>`;
}

/** Each expert's share at each step of training: rows experts, columns steps (at most 600, and 20,000 cells). */
function shareOverSteps(s: MetricsView["shares"][number]): string {
  const e = Math.max(0, ...s.share.map((r) => r.length));
  if (e === 0 || s.steps.length === 0) return "";
  // Long runs: every k-th step, so the map stays a page wide.
  const k = Math.max(1, Math.ceil(s.steps.length / 600), Math.ceil((s.steps.length * e) / 20000));
  const cols = s.steps
    .map((step, i) => ({ step, share: s.share[i]! }))
    .filter((_, i) => i % k === 0);
  const cw = Math.max(1, Math.min(8, Math.floor(900 / cols.length)));
  const ch = Math.max(4, Math.min(14, Math.floor(160 / e)));
  const max = Math.max(1e-9, ...cols.flatMap((c) => c.share));
  const W = 40 + cols.length * cw + 10;
  const H = e * ch + 20;
  const cells = cols
    .map((c, x) =>
      c.share
        .map(
          (v, y) =>
            `<rect x="${40 + x * cw}" y="${y * ch}" width="${cw}" height="${ch}" fill="${heat(v / max)}"><title>step ${c.step}, expert ${y}: ${(100 * v).toFixed(1)}%</title></rect>`,
        )
        .join(""),
    )
    .join("");
  const labels = Array.from(
    { length: e },
    (_, i) =>
      `<text x="36" y="${i * ch + ch - 1}" text-anchor="end" class="tick">${e <= 16 || i % 4 === 0 ? i : ""}</text>`,
  ).join("");
  return `<figure class="share-steps" data-layer="${esc(s.layer)}" data-steps="${cols.length}"><figcaption>${esc(s.layer)}: each expert's share per step (rows: experts; darker: more; balanced ${(100 / e).toFixed(1)}%)</figcaption>
<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">${labels}${cells}<text x="40" y="${H - 4}" class="tick">step ${cols[0]!.step} → ${cols[cols.length - 1]!.step}</text></svg></figure>`;
}

/** −Σ s·ln s in nats. */
export function shareEntropy(share: readonly number[]): number {
  return -share.reduce((a, s) => (s > 0 ? a + s * Math.log(s) : a), 0);
}

function entropyBar(entropy: number, e: number, what: string): string {
  const max = Math.log(Math.max(2, e));
  const t = Math.max(0, Math.min(1, entropy / max));
  return `<figure class="entropy-bar" data-entropy="${entropy}"><figcaption>${esc(what)}: ${num(entropy)} of ${num(max)} nats (uniform)</figcaption><svg viewBox="0 0 320 20" width="320" height="20"><rect x="0" y="2" width="320" height="16" fill="#eee"/><rect class="entropy-fill" x="0" y="2" width="${(320 * t).toFixed(1)}" height="16" fill="#9467bd"/></svg></figure>`;
}

/** Tokens × experts: a filled cell where a token went, shaded by its weight; hover a column. */
function traceGrid(l: RoutingLayer, e: number, maxTokens: number): string {
  const trace = l.trace!;
  const n = Math.min(trace.tokens, maxTokens);
  const cw = Math.max(3, Math.min(14, Math.floor(900 / Math.max(1, n))));
  const ch = Math.max(6, Math.min(14, Math.floor(160 / Math.max(1, e))));
  const groups = trace.groups;
  const g = groups?.[0]?.length ?? 0;
  const top = 4;
  const gridH = e * ch;
  const groupsTop = top + gridH + 8;
  const H = groupsTop + (g > 0 ? g * 8 + 6 : 0) + 16;
  const W = 40 + n * cw + 10;
  const cols: string[] = [];
  for (let t = 0; t < n; t++) {
    const x = 40 + t * cw;
    const row = trace.choices[t] ?? [];
    const taken = row.filter((c) => c.expert >= 0);
    const droppedHere = row.length - taken.length;
    const tip = `token ${t}: ${taken.length ? taken.map((c) => `expert ${c.expert}${c.weight !== undefined ? ` (${num(c.weight)})` : ""}`).join(", ") : "no expert"}${droppedHere ? `, ${droppedHere} dropped` : ""}${groups?.[t] ? `; groups [${groups[t]!.map(num).join(", ")}]` : ""}`;
    const marks = taken
      .map(
        (c) =>
          `<rect class="trace-cell" data-expert="${c.expert}" x="${x}" y="${top + c.expert * ch}" width="${cw - 1}" height="${ch - 1}" fill="#b34700" fill-opacity="${c.weight !== undefined ? Math.max(0.15, Math.min(1, Math.abs(c.weight))).toFixed(3) : 1}"/>`,
      )
      .join("");
    const gmarks = (groups?.[t] ?? [])
      .map(
        (v, j) =>
          `<rect class="trace-group" x="${x}" y="${groupsTop + j * 8}" width="${cw - 1}" height="7" fill="#2ca02c" fill-opacity="${Math.max(0, Math.min(1, v)).toFixed(3)}"/>`,
      )
      .join("");
    cols.push(
      `<g class="trace-token" data-token="${t}"><title>${esc(tip)}</title><rect x="${x}" y="${top}" width="${cw}" height="${gridH}" fill="transparent"/>${marks}${gmarks}</g>`,
    );
  }
  const labels = Array.from(
    { length: e },
    (_, i) =>
      `<text x="36" y="${top + i * ch + ch - 2}" text-anchor="end" class="tick">${e <= 16 || i % 4 === 0 ? i : ""}</text>`,
  ).join("");
  const glabel =
    g > 0 ? `<text x="36" y="${groupsTop + 7}" text-anchor="end" class="tick">groups</text>` : "";
  return `<figure class="trace"><figcaption>each token's experts (columns: tokens${trace.tokens > n ? `, first ${n} of ${trace.tokens}` : ""}; rows: experts; shade: weight; hover a column)</figcaption>
<svg class="trace-grid" data-tokens="${n}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">${labels}${glabel}${cols.join("")}<text x="40" y="${H - 3}" class="tick">token →</text></svg></figure>`;
}

const STYLE = `
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 24px 48px;color:#222;background:#fafafa}
header h1{margin:16px 0 0;font-size:22px}header .meta{margin:2px 0 12px;color:#555}header nav{display:inline}
h2{border-bottom:1px solid #ccc;padding-bottom:2px;margin-top:28px}
.summary button{font-size:12px}
.box{border:1px solid #8aa;border-radius:6px;background:#fff;margin:6px 0;padding:4px 8px}
.box .body,.group .body{margin-left:14px}
.head{display:flex;flex-wrap:wrap;gap:6px;align-items:baseline}
.name{font-weight:600}.comp{color:#246;font-family:ui-monospace,monospace}
.params{color:#555;font-size:12px}.src{font-size:12px;color:#07c;margin-left:auto}
.args{font:11px ui-monospace,monospace;color:#666}
.ports{display:flex;flex-wrap:wrap;gap:4px}.port{font:11px ui-monospace,monospace;background:#eef3f7;border-radius:3px;padding:0 4px;color:#345}
.badge{font-size:11px;border-radius:8px;padding:0 6px;color:#fff;background:#888}
.badge.router{background:#d9822b}.badge.moe{background:#b34700}.badge.expert{background:#2c7a7b}.badge.shared{background:#6b46c1}.badge.adapter{background:#2f855a}.badge.task{background:#3182ce}.badge.count{background:#555}
.role-router{border-color:#d9822b;background:#fff8ef}.role-moe{border:2px solid #b34700;background:#fffaf5}
.role-expert.box{border-color:#2c7a7b}.role-shared.box{border-color:#6b46c1}.role-adapter.box{border-color:#2f855a;background:#f3fbf6}
details.group{border:1px dashed #999;border-radius:6px;margin:6px 0;padding:2px 8px;background:#fdfdfd}
details.role-expert{border:1px solid #2c7a7b;box-shadow:3px 3px 0 #fff,4px 4px 0 #2c7a7b,7px 7px 0 #fff,8px 8px 0 #2c7a7b}
details.role-shared{border:1px solid #6b46c1}
details.kind-per-task{border-color:#3182ce}
summary{cursor:pointer}
.router-info{font-size:12px;color:#b34700}
.routing-layer{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 12px;margin:10px 0}
.routing-layer h3{margin:4px 0;font-size:15px}
table.stats{font-size:12px;border-collapse:collapse}table.stats th{text-align:left;padding-right:12px;color:#555;font-weight:normal}
svg text.tick{font-size:10px;fill:#555}svg text.cell-label{font-size:10px;fill:#000}
svg .bar{fill:#1f77b4}svg .group-bar{fill:#2ca02c}svg .balanced{stroke:#d62728;stroke-dasharray:4 3;stroke-width:1.5}
svg .balanced-label{fill:#d62728}svg .axis{stroke:#999}
.trace-token:hover rect:first-child{fill:#ddeeff}
figure{margin:8px 0}figcaption{font-size:12px;color:#555}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fff;border:1px solid #ddd;border-radius:6px;padding:4px}
.legend{font-size:11px;display:flex;flex-wrap:wrap;gap:8px;max-width:560px}.legend i{display:inline-block;width:10px;height:10px;margin-right:3px}
.from{color:#666;font-size:12px}
`;

const SCRIPT = `
(function(){
  function all(open){document.querySelectorAll("details.group").forEach(function(d){d.open=open;});}
  var e=document.getElementById("expand-all"),c=document.getElementById("collapse-all");
  if(e)e.addEventListener("click",function(){all(true);});
  if(c)c.addEventListener("click",function(){all(false);});
  // In VS Code's webview (moec: Show model) a source link asks the extension to open the file.
  if(typeof acquireVsCodeApi==="function"){
    var vscode=acquireVsCodeApi();
    document.querySelectorAll("a.src").forEach(function(a){a.addEventListener("click",function(ev){
      ev.preventDefault();
      vscode.postMessage({command:"open",file:a.dataset.file,line:Number(a.dataset.line),column:Number(a.dataset.column)});
    });});
  }
})();
`;
