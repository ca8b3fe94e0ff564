// The diffusets-jax page: no framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
let ready = false;

// ---- status: poll /api/health until the model is compiled ----------------------------------
async function pollHealth() {
  let health;
  try {
    const response = await fetch("/api/health", {cache: "no-store"});
    health = await response.json();
  } catch (error) {
    health = {status: "unreachable", message: "the server does not answer"};
  }
  const status = $("status");
  status.textContent = health.status === "ready" ? `ready (${health.model})` : health.message;
  status.className = "status " + (health.status === "ready" ? "ready" : health.status === "warming up" ? "warming" : "failed");
  ready = health.status === "ready";
  $("generate-button").disabled = !ready;
  $("compare-button").disabled = !ready;
  if (!ready) setTimeout(pollHealth, health.status === "failed" ? 10000 : 1000);
}

async function loadModel() {
  try {
    const model = await (await fetch("/api/model")).json();
    const s = model.sampling;
    $("model-summary").textContent = `model: ${model.config_name} (${model.checkpoint}), ` +
      `default sampler ${s.sampler}, ${s.num_steps} steps, guidance ${s.guidance_scale}; at most ${model.limits.num_samples[1]} ECGs per request`;
    $("model-card-text").textContent = model.model_card || "(no MODEL_CARD.md)";
    $("sampler").options[0].textContent = `model default (${s.sampler})`;
    $("num-steps").placeholder = `model default (${s.num_steps})`;
    $("guidance-scale").placeholder = `model default (${s.guidance_scale})`;
    $("exact-limb-leads").checked = !!s.exact_limb_leads;
  } catch (error) { /* the summary is optional */ }
}

// ---- requests --------------------------------------------------------------------------------
function advancedOptions() {
  return {
    sampler: $("sampler").value,
    num_steps: $("num-steps").value,
    guidance_scale: $("guidance-scale").value,
    exact_limb_leads: $("exact-limb-leads").checked,
  };
}

async function generate(body) {
  const response = await fetch("/api/generate", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  let answer;
  try { answer = await response.json(); } catch (error) { answer = {detail: `HTTP ${response.status}`}; }
  if (!response.ok) throw new Error(answer.detail || `HTTP ${response.status}`);
  return answer;
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = !message;
}

function link(href, text, download) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  if (download) a.download = download;
  return a;
}

function rate(value) { return value === null ? "not detected" : `${value} bpm`; }

function ecgFigure(answer, ecg, caption) {
  const figure = document.createElement("figure");
  figure.className = "ecg";
  const img = document.createElement("img");
  img.src = ecg.png;
  img.alt = `12-lead ECG ${ecg.index}: ${answer.report}`;
  img.className = "ecg-image";
  figure.appendChild(img);
  const info = document.createElement("figcaption");
  const hr = document.createElement("span");
  hr.className = "heart-rate";
  hr.textContent = `requested ${answer.heart_rate} bpm · measured ${rate(ecg.measured_heart_rate)}`;
  info.append(caption, hr, " ",
    link(ecg.wfdb_zip, "WFDB record (.hea + .dat, zip)", `${answer.id}_${ecg.record}.zip`), " ",
    link(ecg.png, "PNG", `${answer.id}_${ecg.record}.png`));
  for (const a of info.querySelectorAll("a")) a.className = "download";
  figure.appendChild(info);
  return figure;
}

function summary(answer) {
  const p = document.createElement("p");
  p.className = "summary";
  p.append(`${answer.num_samples} ECG(s) · ${answer.sex}, ${answer.age} y · ${answer.sampler}, ` +
    `${answer.num_steps} steps, guidance ${answer.guidance_scale} · seed ${answer.seed} · ` +
    `${answer.seconds.total.toFixed(1)} s `, link(answer.npz, "all signals (.npz)", `${answer.id}_samples.npz`));
  for (const warning of answer.warnings) {
    const w = document.createElement("div");
    w.className = "warning";
    w.textContent = warning;
    p.appendChild(w);
  }
  return p;
}

// ---- Generate tab ----------------------------------------------------------------------------
async function onGenerate(event) {
  event.preventDefault();
  if (!ready) return;
  const button = $("generate-button"), progress = $("generate-progress");
  showError($("error"), "");
  button.disabled = true;
  progress.hidden = false;
  try {
    const answer = await generate({
      report: $("report").value, age: $("age").value, sex: $("sex").value,
      heart_rate: $("heart-rate").value, num_samples: $("num-samples").value, seed: $("seed").value,
      ...advancedOptions(),
    });
    const results = $("results");
    results.replaceChildren(summary(answer));
    for (const ecg of answer.ecgs) results.appendChild(ecgFigure(answer, ecg, `#${ecg.index} · `));
  } catch (error) {
    showError($("error"), error.message);
  } finally {
    button.disabled = !ready;
    progress.hidden = true;
  }
}

// ---- Compare tab -----------------------------------------------------------------------------
async function onCompare(event) {
  event.preventDefault();
  if (!ready) return;
  const button = $("compare-button"), progress = $("compare-progress");
  showError($("compare-error"), "");
  button.disabled = true;
  progress.hidden = false;
  try {
    const common = {age: $("compare-age").value, sex: $("compare-sex").value, seed: $("compare-seed").value,
                    num_samples: 1, ...advancedOptions()};
    const sides = [];
    for (const side of ["a", "b"]) {  // one after the other: the server runs one request at a time
      try {
        sides.push(await generate({...common, report: $(`report-${side}`).value, heart_rate: $(`hr-${side}`).value}));
      } catch (error) {
        throw new Error(`${side.toUpperCase()}: ${error.message}`);
      }
    }
    const results = $("compare-results");
    results.replaceChildren();
    sides.forEach((answer, i) => {
      const column = document.createElement("div");
      column.className = "side";
      const title = document.createElement("h3");
      title.textContent = `${"AB"[i]}: ${answer.report} · ${answer.heart_rate} bpm`;
      column.append(title, ecgFigure(answer, answer.ecgs[0], ""));
      results.appendChild(column);
    });
  } catch (error) {
    showError($("compare-error"), error.message);
  } finally {
    button.disabled = !ready;
    progress.hidden = true;
  }
}

// ---- wiring ----------------------------------------------------------------------------------
function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const panel of document.querySelectorAll(".tab-panel")) panel.hidden = panel.id !== `tab-${name}`;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  for (const example of document.querySelectorAll(".example")) {
    example.addEventListener("click", () => {
      $("report").value = example.dataset.report;
      $("heart-rate").value = example.dataset.hr;
    });
  }
  for (const preset of document.querySelectorAll(".preset")) {
    preset.addEventListener("click", () => {
      $("report-a").value = preset.dataset.aReport; $("hr-a").value = preset.dataset.aHr;
      $("report-b").value = preset.dataset.bReport; $("hr-b").value = preset.dataset.bHr;
    });
  }
  $("generate-form").addEventListener("submit", onGenerate);
  $("compare-form").addEventListener("submit", onCompare);
  loadModel();
  pollHealth();
});
