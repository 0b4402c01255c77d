// safeclip explore: sends queries to the local server and shows each model's ranked answers side by side.
// Every unsafe or unknown image is requested blurred (the server blurs it) unless "reveal" is switched on.
"use strict";

const $ = (id) => document.getElementById(id);
let status = null;
let lastAnswer = null;
let lastPaint = null;

function element(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

async function getJSON(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the explore server does not answer (is `safeclip explore` still running?)");
  }
  const data = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (!response.ok || data.error) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

function renderStatus(s) {
  const info = $("gallery-info");
  if (s.gallery_error) {
    info.textContent = "No gallery.";
    showMessage(s.gallery_error);
  } else if (s.gallery) {
    info.textContent = `Gallery ${s.gallery.source}: ${s.gallery.summary}. Models: ${s.models.map((m) => m.label).join(", ")}.`;
  }
  const box = $("progress");
  box.replaceChildren();
  for (const m of s.models) {
    if (m.state === "ready") continue;
    const line = element("div", { class: "model", "data-model": m.label, "data-state": m.state });
    let text = `${m.label}: ${m.state}`;
    if (m.state === "embedding" && m.total) text += ` gallery ${m.done}/${m.total}`;
    if (m.message) text += ` (${m.message})`;
    line.append(element("span", {}, text + " "));
    if (m.state === "embedding" && m.total) line.append(element("progress", { max: m.total, value: m.done }));
    box.append(line);
  }
  if (s.painter && s.painter.state !== "off" && s.painter.state !== "ready") {
    box.append(element("div", { class: "model" }, `text-to-image: ${s.painter.state} ${s.painter.message}`));
  }
  document.body.dataset.ready = s.ready ? "true" : "false";
}

async function pollStatus() {
  try {
    status = await getJSON("/api/status");
    renderStatus(status);
    const painting = status.painter && ["waiting", "loading"].includes(status.painter.state);
    if (!status.ready || painting) setTimeout(pollStatus, 500);
  } catch (err) {
    showMessage(err.message);
    setTimeout(pollStatus, 2000);
  }
}

function revealed() {
  return $("reveal").checked;
}

function imageSource(base, label) {
  const clear = label === "safe" || revealed();
  return { src: `${base}?view=${clear ? "clear" : "blurred"}`, blurred: clear ? "false" : "true" };
}

function resultItem(result, side) {
  const item = element("li", {
    class: `result ${result.label}`, "data-rank": result.rank, "data-index": result.index,
    "data-label": result.label, "data-score": result.score, "data-source": result.source,
  });
  if (side === "images") {
    const { src, blurred } = imageSource(`/thumb/${result.index}`, result.label);
    item.append(element("img", { src, "data-blurred": blurred, "data-label": result.label,
      alt: `${result.label} gallery image ${result.source}` }));
  } else {
    item.append(element("div", { class: "caption" }, result.value));
  }
  const meta = element("div", {}, `#${result.rank} · ${result.score.toFixed(3)} `);
  meta.append(element("span", { class: `tag ${result.label}` }, result.label));
  item.append(meta);
  return item;
}

function column(label, answer, side) {
  const col = element("section", { class: "column", "data-model": label });
  col.append(element("h2", {}, label));
  if (answer.state !== "ready") {
    col.append(element("p", { class: "message" }, `${label} is ${answer.state}: ${answer.message}`));
    return col;
  }
  const nsfw = answer.nsfw_at_1 === null ? "unknown (the gallery does not mark its items)" :
    `${answer.nsfw_at_1.toFixed(0)} (top-1 is ${answer.nsfw_at_1 > 0 ? "unsafe" : "safe"})`;
  col.append(element("p", { class: "stats", "data-nsfw-at-1": String(answer.nsfw_at_1) },
    `NSFW@1: ${nsfw}; unsafe in top ${answer.results.length}: ${answer.unsafe_in_top_k}`));
  const list = element("ol", { class: side === "texts" ? "captions" : "images" });
  for (const result of answer.results) list.append(resultItem(result, side));
  col.append(list);
  return col;
}

function renderAnswer(answer) {
  lastAnswer = answer;
  const box = $("results");
  box.replaceChildren();
  const what = answer.side === "images" ? "gallery images" : "gallery captions";
  $("summary").textContent = `Top ${answer.k} ${what} for ${answer.kind === "text" ? `"${answer.query}"` : "the uploaded image"} ` +
    `(answered in ${(answer.seconds * 1000).toFixed(0)} ms).`;
  for (const [label, result] of Object.entries(answer.models)) box.append(column(label, result, answer.side));
}

function renderPaint(paint) {
  lastPaint = paint;
  for (const [label, id] of Object.entries(paint.images)) {
    const col = document.querySelector(`.column[data-model="${CSS.escape(label)}"]`);
    if (!col) continue;
    const box = element("div", { class: "generated" }, `Stable Diffusion with ${label}'s text encoder (seed ${paint.seed}):`);
    const { src, blurred } = imageSource(`/generated/${id}`, "unknown");
    box.append(element("img", { src, "data-blurred": blurred, "data-label": "generated", alt: `generated with ${label}` }));
    col.append(box);
  }
}

function applyReveal() {
  for (const img of document.querySelectorAll("img[data-blurred]")) {
    if (img.dataset.label === "safe") continue;
    const base = img.getAttribute("src").split("?")[0];
    const { src, blurred } = imageSource(base, "unknown");
    img.setAttribute("src", src);
    img.dataset.blurred = blurred;
  }
}

async function searchText(event) {
  event.preventDefault();
  showMessage("");
  const q = $("query").value;
  const params = new URLSearchParams({ q, k: $("k").value });
  const models = new URLSearchParams(window.location.search).get("models");
  if (models) params.set("models", models);
  try {
    renderAnswer(await getJSON(`/api/search?${params}`));
  } catch (err) {
    showMessage(err.message);
    return;
  }
  if (status && status.painter && status.painter.state === "ready") {
    try {
      renderPaint(await getJSON(`/api/generate?${params}`));
    } catch (err) {
      showMessage(err.message);
    }
  }
}

async function searchImage() {
  showMessage("");
  const file = $("image-query").files[0];
  if (!file) return;
  const params = new URLSearchParams({ k: $("k").value });
  const models = new URLSearchParams(window.location.search).get("models");
  if (models) params.set("models", models);
  try {
    renderAnswer(await getJSON(`/api/search-image?${params}`, { method: "POST", body: file }));
  } catch (err) {
    showMessage(err.message);
  }
}

$("query-form").addEventListener("submit", searchText);
$("image-query").addEventListener("change", searchImage);
$("reveal").addEventListener("change", applyReveal);
pollStatus();
