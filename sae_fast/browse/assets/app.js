// sae_fast feature browser. Data comes as small chunk scripts (data/*.js) that call SAE.put(...), so the
// pages work from file:// without a server and never load more than the chunks they show.
"use strict";
const SAE = (() => {
  const store = {};
  const LABELS = {"1": "stable", "0": "neither", "-1": "unstable"};
  function reportError(text) {
    const box = document.getElementById("errors");
    if (box) box.textContent += text + "\n";
    document.body.dataset.errors = "1";
  }
  window.addEventListener("error", (e) => reportError(String(e.message || e)));
  window.addEventListener("unhandledrejection", (e) => reportError(String(e.reason)));

  function put(key, value) { store[key] = value; }
  function load(key, src) {
    if (key in store) return Promise.resolve(store[key]);
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = () => (key in store ? resolve(store[key]) : reject(new Error(src + " did not define " + key)));
      s.onerror = () => reject(new Error("could not load " + src));
      document.head.appendChild(s);
    });
  }
  const meta = () => load("meta", "data/meta.js");
  const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toPrecision(d));
  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function link(latent) {
    const a = document.createElement("a");
    a.href = "latent.html#" + latent;
    a.textContent = String(latent);
    return a;
  }

  // ---- index page ------------------------------------------------------------------------------------
  async function startIndex() {
    const m = await meta();
    const rows = [];
    for (let c = 0; c < m.index_chunks; c++) {
      const part = await load("index" + c, "data/index_" + c + ".js");
      for (const r of part) rows.push(r);
      document.getElementById("summary").textContent = "loading… " + rows.length + " / " + m.num_latents;
    }
    document.getElementById("summary").textContent =
      `seed ${m.seed} of ${m.seeds.length} seeds · ${m.num_latents} latents · θ = ${m.theta}, ε = ${m.eps}` +
      ` · stable ${m.counts.stable}, neither ${m.counts.neither}, unstable ${m.counts.unstable}`;
    const q = new URLSearchParams(location.search);  // e.g. ?label=-1&sort=3&desc=1: a filtered view as a link
    const state = {sort: Number(q.get("sort") || 0), desc: q.get("desc") === "1", page: 0, per: m.page_size,
                   shown: rows};
    const ids = ["f-label", "f-pmin", "f-pmax", "f-fmin", "f-cand"];
    const params = {"f-label": "label", "f-pmin": "pmin", "f-pmax": "pmax", "f-fmin": "fmin", "f-cand": "candidate"};
    ids.forEach((id) => { if (q.has(params[id])) document.getElementById(id).value = q.get(params[id]); });
    ids.forEach((id) => document.getElementById(id).addEventListener("input", () => { state.page = 0; refresh(); }));
    document.getElementById("f-goto").addEventListener("change", (e) => { location.href = "latent.html#" + e.target.value; });
    document.querySelectorAll("#latents th").forEach((th) => th.addEventListener("click", () => {
      const col = Number(th.dataset.col);
      state.desc = state.sort === col ? !state.desc : col === 1 || col === 3 || col === 5;
      state.sort = col;
      refresh();
    }));
    document.getElementById("prev").onclick = () => { state.page = Math.max(0, state.page - 1); render(); };
    document.getElementById("next").onclick = () => { state.page += 1; render(); };
    function keep(r) {
      const lab = document.getElementById("f-label").value;
      const pmin = Number(document.getElementById("f-pmin").value || 0);
      const pmax = Number(document.getElementById("f-pmax").value || 1);
      const fmin = Number(document.getElementById("f-fmin").value || 0);
      const cand = document.getElementById("f-cand").value.trim();
      if (lab !== "" && String(r[2]) !== lab) return false;
      if (r[1] < pmin - 1e-9 || r[1] > pmax + 1e-9) return false;
      if (fmin > 0 && !(r[3] >= fmin)) return false;
      if (cand === "*" && r[4] < 0) return false;
      if (cand !== "" && cand !== "*" && String(r[4]) !== cand) return false;
      return true;
    }
    function refresh() {
      const k = state.sort, sign = state.desc ? -1 : 1;
      const val = (r) => (r[k] === null || Number.isNaN(r[k]) ? -Infinity : r[k]);
      state.shown = rows.filter(keep).sort((a, b) => sign * (val(a) - val(b)) || a[0] - b[0]);
      document.querySelectorAll("#latents th").forEach((th) => {
        th.className = Number(th.dataset.col) === k ? (state.desc ? "sorted-desc" : "sorted-asc") : "";
      });
      render();
    }
    function render() {
      const pages = Math.max(1, Math.ceil(state.shown.length / state.per));
      state.page = Math.min(state.page, pages - 1);
      const body = document.querySelector("#latents tbody");
      body.replaceChildren();
      for (const r of state.shown.slice(state.page * state.per, (state.page + 1) * state.per)) {
        const tr = document.createElement("tr");
        cell(tr, "").appendChild(link(r[0]));
        cell(tr, fmt(r[1]));
        cell(tr, LABELS[String(r[2])], LABELS[String(r[2])]);
        cell(tr, fmt(r[3]));
        cell(tr, r[4] >= 0 ? String(r[4]) : "–");
        cell(tr, fmt(r[5]));
        body.appendChild(tr);
      }
      document.getElementById("count").textContent = state.shown.length + " latents match";
      document.getElementById("page").textContent = "page " + (state.page + 1) + " / " + pages;
    }
    refresh();
    document.body.dataset.ready = "1";
  }

  // ---- latent page -----------------------------------------------------------------------------------
  function histogram(counts, edges) {
    const w = 400, h = 120, n = counts.length, top = Math.max(1, ...counts);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h);
    counts.forEach((c, i) => {
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      const bh = (h - 4) * c / top;
      r.setAttribute("x", i * w / n); r.setAttribute("width", w / n - 1);
      r.setAttribute("y", h - bh); r.setAttribute("height", bh); r.setAttribute("class", "bar");
      const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
      t.textContent = `${fmt(edges[i])} – ${fmt(edges[i + 1])}: ${c}`;
      r.appendChild(t);
      svg.appendChild(r);
    });
    return svg;
  }
  function snippetNode(text) {
    const code = document.createElement("code");
    code.className = "snippet";
    const m = /^(.*)\[\[(.*)\]\](.*)$/s.exec(text);
    if (!m) { code.textContent = text; return code; }
    const mark = document.createElement("mark");
    mark.textContent = m[2];
    code.append(m[1], mark, m[3]);
    return code;
  }
  async function showLatent() {
    const m = await meta();
    const i = Number(location.hash.slice(1) || 0);
    if (!Number.isInteger(i) || i < 0 || i >= m.num_latents) throw new Error("no latent " + location.hash.slice(1));
    const c = Math.floor(i / m.latent_chunk);
    const d = (await load("latents" + c, "data/latents_" + c + ".js"))[i - c * m.latent_chunk];
    document.title = `latent ${i} — sae_fast feature browser`;
    document.getElementById("title").textContent = `seed ${m.seed}, latent ${i}`;
    document.getElementById("prev-latent").href = "#" + Math.max(0, i - 1);
    document.getElementById("next-latent").href = "#" + Math.min(m.num_latents - 1, i + 1);
    const stats = document.getElementById("stats");
    stats.replaceChildren();
    const lab = LABELS[String(d.label)];
    for (const [k, v, cls] of [["p̂", fmt(d.p_hat), null], ["label", lab, lab], ["firing frequency", fmt(d.frequency), null]]) {
      const p = document.createElement("p");
      p.textContent = k + ": " + v;
      if (cls) p.className = cls;
      stats.appendChild(p);
    }
    const body = document.querySelector("#partners tbody");
    body.replaceChildren();
    for (const [s, j, cos] of d.partners) {
      const tr = document.createElement("tr");
      cell(tr, m.seeds[s]); cell(tr, String(j)); cell(tr, fmt(cos), cos >= m.theta ? "stable" : "");
      body.appendChild(tr);
    }
    const hist = document.getElementById("hist");
    hist.replaceChildren(d.hist ? histogram(d.hist.counts, d.hist.edges) : document.createTextNode("no activations given"));
    const top = document.getElementById("top");
    top.replaceChildren();
    for (const t of d.top || []) {
      const li = document.createElement("li");
      li.append(`${fmt(t.value)} at row ${t.row} `);
      if (t.snippet) li.appendChild(snippetNode(t.snippet));
      top.appendChild(li);
    }
    if (!(d.top || []).length) top.textContent = "none recorded";
    const cand = document.getElementById("candidate");
    cand.replaceChildren();
    if (d.candidate >= 0) {
      cand.append(`candidate ${d.candidate}: `);
      for (const j of d.members) { cand.appendChild(link(j)); cand.append(" "); }
    } else cand.textContent = "not in a candidate subspace";
    document.body.dataset.ready = "1";
  }
  function startLatent() {
    const go = () => showLatent().catch((e) => reportError(String(e)));
    window.addEventListener("hashchange", go);
    go();
  }
  return {put, startIndex: () => startIndex().catch((e) => reportError(String(e))), startLatent};
})();
