// modelplane's dashboard: the board as the server holds it, kept live over /events (server-sent events).
// Every name and reason on the page is someone else's text: it goes in with textContent, never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const HISTORY_LENGTH = 6; // states of a model seen by this page, newest last
const board = { servers: {}, models: {}, pipelines: {}, experiments: {}, experimentSpecs: {}, traffic: {}, runs: {}, sources: {} };
const modelHistory = new Map(); // model -> [state, ...] as seen since the page opened
let truncated = [];
let renderQueued = false;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
  return node;
}

function stateClass(state) {
  if (/Available|Ready|Loaded$|^succeeded|^active/i.test(state)) return "ok";
  if (/Failed|Unknown|^failed/i.test(state)) return "bad";
  if (/Progressing|Creating|Loading|Rebalancing|Terminating|Requested|^running|^queued|^training|Create$/i.test(state)) return "busy";
  return "";
}

function shortState(state) {
  return String(state).replace(/^(Model|Pipeline)(?=[A-Z])/, "");
}

function badge(state, text) {
  return el("span", { class: `badge ${stateClass(state)}` }, text === undefined ? shortState(state) : text);
}

function bytes(n) {
  if (typeof n !== "number") return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function sorted(objects) {
  return Object.keys(objects).sort().map((name) => objects[name]);
}

function fillBody(table, rows, columns, emptyText) {
  const body = document.querySelector(`#${table} tbody`);
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText))]));
}

function noteModel(name, view) {
  if (!view) return;
  const seen = modelHistory.get(name) || [];
  if (seen[seen.length - 1] !== view.state) {
    seen.push(view.state);
    if (seen.length > HISTORY_LENGTH) seen.shift();
    modelHistory.set(name, seen);
  }
}

function renderSources() {
  const items = sorted(board.sources).map((source) =>
    el("li", { title: source.detail || source.address, "data-source": source.name },
      badge(source.ok ? "Available" : "Failed", `${source.name}: ${source.ok ? "live" : source.detail || "down"}`)));
  document.getElementById("sources").replaceChildren(...items);
  const note = document.getElementById("truncated");
  note.hidden = truncated.length === 0;
  note.textContent = truncated.length ? `Too many objects to hold: only some ${truncated.join(", ")} are shown.` : "";
}

function renderServers() {
  const rows = sorted(board.servers).map((server) => {
    const memory = el("div");
    for (const replica of server.replicas) {
      const used = Math.max(0, replica.totalMemoryBytes - replica.availableMemoryBytes);
      const share = replica.totalMemoryBytes ? Math.min(100, (100 * used) / replica.totalMemoryBytes) : 0;
      memory.append(el("div", {},
        `#${replica.index} `,
        el("span", { class: "meter", title: `${share.toFixed(0)}%` }, el("span", { style: null, "data-width": share.toFixed(1) })),
        `${bytes(used)} / ${bytes(replica.totalMemoryBytes)}`));
    }
    return el("tr", { "data-server": server.name },
      el("td", {}, server.name),
      el("td", {}, badge(server.availableReplicas > 0 ? "Available" : "Failed", `${server.availableReplicas} / ${server.expectedReplicas}`)),
      el("td", {}, memory),
      el("td", {}, String(server.loadedModelReplicas)));
  });
  fillBody("servers", rows, 4, "no servers connected");
  // Widths through the CSSOM: the page's policy allows no inline style attribute.
  for (const bar of document.querySelectorAll("#servers .meter > span")) bar.style.width = `${bar.dataset.width}%`;
}

function renderModels() {
  const rows = sorted(board.models).map((model) => {
    const history = modelHistory.get(model.name) || [model.state];
    return el("tr", { "data-model": model.name, "data-state": model.state, "data-history": history.join(" ") },
      el("td", {}, model.name),
      el("td", {}, String(model.version)),
      el("td", { class: "state" }, badge(model.state)),
      el("td", {}, `${model.availableReplicas} available` + (model.unavailableReplicas ? `, ${model.unavailableReplicas} not` : "")),
      el("td", {}, model.server || "-"),
      el("td", { class: "reason" }, model.reason || ""),
      el("td", { class: "history" }, history.map(shortState).join(" → ")));
  });
  fillBody("models", rows, 7, "no models loaded");
}

// Layered drawing: each step one column right of the furthest step it reads from (bounded: cycles are allowed in
// pipelines, so a step is moved right at most once per step).
function pipelineGraph(pipeline, index) {
  const steps = pipeline.steps;
  const names = new Set(steps.map((step) => step.name));
  const column = new Map(steps.map((step) => [step.name, 1]));
  for (let round = 0; round < steps.length; round += 1) {
    let moved = false;
    for (const step of steps) {
      for (const input of step.inputs) {
        if (names.has(input) && input !== step.name && column.get(input) + 1 > column.get(step.name)) {
          column.set(step.name, Math.min(column.get(input) + 1, steps.length));
          moved = true;
        }
      }
    }
    if (!moved) break;
  }
  const last = Math.max(1, ...column.values()) + 1;
  const nodes = [{ name: "inputs", label: `${pipeline.name} inputs`, column: 0, kind: "io" }];
  for (const step of steps) nodes.push({ name: step.name, label: step.name, column: column.get(step.name), kind: "step" });
  nodes.push({ name: "outputs", label: "outputs", column: last, kind: "io" });
  const perColumn = new Map();
  for (const node of nodes) {
    node.row = perColumn.get(node.column) || 0;
    perColumn.set(node.column, node.row + 1);
  }
  const width = 150, height = 34, gapX = 50, gapY = 16;
  const at = new Map(nodes.map((node) => [node.name, { x: 8 + node.column * (width + gapX), y: 8 + node.row * (height + gapY) }]));
  const totalWidth = 16 + (last + 1) * width + last * gapX;
  const totalHeight = 16 + Math.max(...perColumn.values()) * (height + gapY) - gapY;
  const drawing = svg("svg", { width: totalWidth, height: totalHeight, viewBox: `0 0 ${totalWidth} ${totalHeight}`, role: "img", "data-pipeline-graph": pipeline.name });
  const marker = `arrow-${index}`;
  const defs = svg("defs");
  const arrowHead = svg("marker", { id: marker, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  arrowHead.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8c959f" }));
  defs.append(arrowHead);
  drawing.append(defs);
  const edge = (from, to) => {
    const a = at.get(from), b = at.get(to);
    if (!a || !b) return;
    const x1 = a.x + width, y1 = a.y + height / 2, x2 = b.x, y2 = b.y + height / 2;
    const bend = Math.max(20, (x2 - x1) / 2);
    drawing.append(svg("path", { class: "edge", d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`, "marker-end": `url(#${marker})` }));
  };
  for (const step of steps) {
    const from = step.inputs.filter((input) => names.has(input) && input !== step.name);
    if (from.length === 0) edge("inputs", step.name);
    for (const input of from) edge(input, step.name);
  }
  const outputs = pipeline.outputs.length ? pipeline.outputs : steps.length ? [steps[steps.length - 1].name] : [];
  for (const output of outputs) edge(output, "outputs");
  if (steps.length === 0) edge("inputs", "outputs");
  for (const node of nodes) {
    const { x, y } = at.get(node.name);
    const model = node.kind === "step" ? board.models[node.name] : null;
    const state = model ? model.state : node.kind === "step" ? "not loaded" : "";
    const group = svg("g", { class: "node", "data-step": node.kind === "step" ? node.name : "", "data-state": state });
    const fill = node.kind === "io" ? "#eaeef2" : { ok: "#dafbe1", busy: "#fff8c5", bad: "#ffebe9" }[stateClass(state)] || "#f6f8fa";
    group.append(svg("rect", { x, y, width, height, fill }));
    const label = svg("text", { x: x + 8, y: y + (state ? 14 : 21) });
    label.textContent = node.label.length > 22 ? `${node.label.slice(0, 21)}…` : node.label;
    group.append(label);
    if (state) {
      const stateText = svg("text", { x: x + 8, y: y + 28, fill: "#57606a" });
      stateText.textContent = shortState(state);
      group.append(stateText);
    }
    const title = svg("title");
    title.textContent = state ? `${node.label}: ${state}` : node.label;
    group.append(title);
    drawing.append(group);
  }
  return drawing;
}

function renderPipelines() {
  const cards = sorted(board.pipelines).map((pipeline, index) =>
    el("div", { class: "card", "data-pipeline": pipeline.name, "data-state": pipeline.state },
      el("h3", {}, pipeline.name, el("small", {}, `v${pipeline.version}`), badge(pipeline.state)),
      pipeline.reason ? el("p", { class: "reason" }, pipeline.reason) : null,
      pipelineGraph(pipeline, index)));
  document.getElementById("pipelines").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty-note" }, "no pipelines loaded")]));
}

function percent(value) {
  return value === null || value === undefined ? "-" : `${(100 * value).toFixed(0)}%`;
}

function renderExperiments() {
  const names = [...new Set([...Object.keys(board.experiments), ...Object.keys(board.experimentSpecs)])].sort();
  const cards = names.map((name) => {
    const status = board.experiments[name] || {};
    const spec = board.experimentSpecs[name];
    const traffic = board.traffic[name];
    const state = status.active ? "active" : "inactive";
    const card = el("div", { class: "card", "data-experiment": name, "data-active": String(!!status.active) },
      el("h3", {}, name, badge(status.active ? "Available" : "Progressing", state)),
      status.description && status.description !== "active" ? el("p", { class: "reason" }, status.description) : null);
    if (spec) {
      const totalWeight = spec.candidates.reduce((sum, candidate) => sum + candidate.weight, 0);
      const routes = new Map((traffic ? traffic.routes : []).map((route) => [route.name, route]));
      const rows = spec.candidates.map((candidate) => {
        const route = routes.get(candidate.name);
        const share = route ? route.share : null;
        return el("tr", { "data-candidate": candidate.name, "data-requests": route ? route.requests : 0 },
          el("td", {}, candidate.name + (candidate.name === spec.default ? " (default)" : "")),
          el("td", {}, `${candidate.weight}` + (totalWeight ? ` (${percent(candidate.weight / totalWeight)})` : "")),
          el("td", {}, el("span", { class: "meter" }, el("span", { "data-width": share === null ? 0 : (100 * share).toFixed(1) })),
            route ? `${percent(share)} of ${traffic.total} requests` : "-"));
      });
      card.append(el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, `${spec.resourceType}`), el("th", {}, "weight"),
          el("th", {}, traffic ? `traffic (last ${traffic.windowSeconds}s)` : "traffic"))),
        el("tbody", {}, ...rows)));
      if (spec.mirror) card.append(el("p", {}, `mirror: ${spec.mirror.percent}% to ${spec.mirror.name}`));
    }
    return card;
  });
  document.getElementById("experiments").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty-note" }, "no experiments running")]));
  for (const bar of document.querySelectorAll("#experiments .meter > span")) bar.style.width = `${bar.dataset.width}%`;
}

function renderRuns() {
  const runs = Object.values(board.runs).sort((a, b) => (b.updatedAt || 0) - (a.updatedAt || 0));
  const rows = runs.map((run) => el("tr", { "data-run": run.runId, "data-state": run.state },
    el("td", {}, run.runId),
    el("td", {}, badge(run.state, run.state), run.lastError ? el("div", { class: "reason" }, run.lastError) : null),
    el("td", {}, Object.entries(run.metrics).map(([key, value]) => `${key}=${Number(value).toPrecision(4)}`).join("  ") || "-"),
    el("td", { class: "reason" }, run.modelUri || "-"),
    el("td", {}, run.updatedAt ? new Date(run.updatedAt * 1000).toLocaleTimeString() : "-")));
  fillBody("runs", rows, 5, board.sources.trainer ? "no training runs" : "no trainer given (--trainer URL)");
}

function render() {
  renderQueued = false;
  renderSources();
  renderServers();
  renderModels();
  renderPipelines();
  renderExperiments();
  renderRuns();
}

function queueRender() {
  if (!renderQueued) {
    renderQueued = true;
    requestAnimationFrame(render);
  }
}

function apply(change) {
  const objects = board[change.kind];
  if (!objects) return;
  if (change.view === null) {
    delete objects[change.name];
    if (change.kind === "models") modelHistory.delete(change.name);
  } else {
    objects[change.name] = change.view;
    if (change.kind === "models") noteModel(change.name, change.view);
  }
}

function connect() {
  const connection = document.getElementById("connection");
  const events = new EventSource("/events");
  events.addEventListener("snapshot", (event) => {
    const snapshot = JSON.parse(event.data);
    for (const kind of Object.keys(board)) board[kind] = snapshot.objects[kind] || {};
    for (const [name, view] of Object.entries(board.models)) noteModel(name, view);
    for (const name of [...modelHistory.keys()]) if (!board.models[name]) modelHistory.delete(name);
    truncated = snapshot.truncated;
    connection.textContent = "live";
    connection.className = "badge ok";
    queueRender();
  });
  events.addEventListener("changes", (event) => {
    for (const change of JSON.parse(event.data)) apply(change);
    queueRender();
  });
  events.addEventListener("error", () => {
    // EventSource reconnects by itself and the server starts again with a snapshot.
    connection.textContent = "reconnecting";
    connection.className = "badge bad";
  });
}

connect();
