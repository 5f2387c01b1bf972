// gpufleet overview: every host as a dense row, live over SSE; filters live in the URL.
"use strict";

(() => {
  const { t, esc, gShort, pct, ratio, shortModel, ago, bytes } = GF;
  const hostsEl = document.getElementById("hosts");
  const form = document.getElementById("filters");
  const views = new Map(); // name -> latest view (from the server)
  const rows = new Map(); // name -> row element
  let hostAlerts = {}; // name -> firing alerts by severity (the stream's "alerts" event)
  let order = []; // names in display order
  let lastSort = 0;
  let sortTimer = null;

  // ---- filters (the URL is the state) --------------------------------------------------------
  const FIELDS = ["q", "free", "model", "user", "group", "source", "status", "sort"];
  function readFilters() {
    const f = {};
    for (const k of FIELDS) {
      const el = form.elements[k];
      f[k] = el.type === "checkbox" ? el.checked : el.value;
    }
    f.q = f.q.trim().toLowerCase();
    return f;
  }
  let filters = readFilters();

  function writeURL() {
    const p = new URLSearchParams();
    for (const k of FIELDS) {
      const el = form.elements[k];
      if (el.type === "checkbox" ? el.checked : el.value && !(k === "sort" && el.value === "name")) {
        p.set(k, el.type === "checkbox" ? "1" : el.value);
      }
    }
    const qs = p.toString();
    history.replaceState(null, "", qs ? `?${qs}` : location.pathname);
  }

  function matches(v, f) {
    if (f.free && !(v.free_gpu_count > 0 && v.status !== "offline")) return false;
    if (f.model && !(v.gpu_models || []).includes(f.model)) return false;
    if (f.user && !(v.users || []).includes(f.user)) return false;
    if (f.group && v.group !== f.group) return false;
    if (f.source && v.source !== f.source) return false;
    if (f.status && v.status !== f.status) return false;
    if (f.q) {
      const hay = [v.name, v.group || "", ...(v.gpu_models || []), ...(v.users || [])]
        .join(" ").toLowerCase();
      if (!hay.includes(f.q)) return false;
    }
    return true;
  }

  function meanUtil(v) {
    const u = v.gpus.map((g) => g.utilization_gpu_percent).filter((x) => x !== null);
    return u.length ? u.reduce((a, b) => a + b, 0) / u.length : -1;
  }
  const byName = (a, b) => a.localeCompare(b, undefined, { numeric: true });
  function sortedNames() {
    const names = [...views.keys()];
    const s = filters.sort;
    if (s === "free") {
      const key = (n) => { const v = views.get(n); return v.status === "offline" ? -1 : v.free_gpu_count; };
      names.sort((a, b) => key(b) - key(a) || byName(a, b));
    } else if (s === "util") {
      const u = new Map(names.map((n) => [n, meanUtil(views.get(n))]));
      names.sort((a, b) => u.get(b) - u.get(a) || byName(a, b));
    } else {
      names.sort(byName);
    }
    return names;
  }

  // ---- rendering -------------------------------------------------------------------------
  function gpuCell(g, queued) {
    const util = g.utilization_gpu_percent;
    const mem = ratio(g.memory_used_bytes, g.memory_total_bytes);
    const cls = g.error ? "err" : g.idle ? "idle" : g.free ? "free" : "";
    const users = g.users.map((u) => `${u.user} ${gShort(u.gpu_memory_bytes)}`.trim());
    const temp = g.temperature_celsius === null ? "" : `${Math.round(g.temperature_celsius)}°`;
    const power = g.power_watts === null ? "" : `${Math.round(g.power_watts)}W`;
    let who;
    if (g.error) who = `<div class="who">${esc(t("error"))}</div>`;
    else if (users.length) {
      const idle = g.idle ? `<span class="idle-t">${esc(t("idle"))}</span> ` : "";
      who = `<div class="who">${idle}${esc(users.join(", "))}</div>`;
    } else if (g.free) who = `<div class="who nobody">${esc(t("free"))}</div>`;
    else who = `<div class="who nobody">${g.idle ? `<span class="idle-t">${esc(t("idle"))}</span> ` : ""}${esc(t("held"))}</div>`;
    const title = [
      `GPU ${g.index} · ${g.name || t("unknown")}`,
      t("utilisation {util} · memory {used} / {total}", { util: pct(util), used: bytes(g.memory_used_bytes), total: bytes(g.memory_total_bytes) }),
      `${temp || "N/A"} C · ${power || "N/A"}${g.power_limit_watts ? t(" of {watts}W", { watts: Math.round(g.power_limit_watts) }) : ""}`,
      g.users.length ? t("held by {users}", { users: g.users.map((u) => `${u.user} (${bytes(u.gpu_memory_bytes)})`).join(", ") })
        : !g.free && !g.error ? t("held: no process seen (driver/context memory, or a process in another container or PID namespace)") : "",
      g.idle ? t("held but idle since {time}", { time: new Date(g.idle_since * 1000).toLocaleTimeString() }) : "",
      g.error ? t("error: {error}", { error: g.error }) : "",
    ].filter(Boolean).join("\n");
    const q = queued ? ` queued" data-queued="1` : "";
    return `<div class="gpu ${cls}${q}" data-gpu="${g.index}" title="${esc(title)}${queued ? `\n${esc(t("running a job of the gpufleet queue (/queue)"))}` : ""}">`
      + `<div class="top"><b>${g.index}${queued ? ' <span class="qmark">Q</span>' : ""}</b><span>${temp} ${power}</span></div>`
      + `<div class="bar u${util !== null && util >= 90 ? " hi" : ""}" data-util="${util ?? ""}"><i style="width:${util ?? 0}%"></i></div>`
      + `<div class="bar m" data-mem="${mem === null ? "" : mem.toFixed(1)}"><i style="width:${mem ?? 0}%"></i></div>`
      + who + `</div>`;
  }

  function mini(label, value, text) {
    return `<span>${label}</span><div class="mini"><i style="width:${value ?? 0}%"></i></div><span class="val">${text}</span>`;
  }

  function rowHTML(v) {
    const models = v.gpu_models.length ? v.gpu_models.map(shortModel).join(", ") : t("no GPU");
    const badge = v.source === "replay"
      ? `<span class="badge replay" title="${esc(t("simulated host replaying a recorded trace"))}">${esc(t("replay"))}</span>`
      : v.source === "ssh" ? `<span class="badge src" title="${esc(t("agent-less, polled over SSH"))}">ssh</span>` : "";
    const sub = v.status === "online" ? t("online") : `${t(v.status === "stale" ? "stale" : "offline")} · ${t("last seen {ago}", { ago: ago(v.last_received) })}`;
    // A host with no GPU whose only "errors" say there is no NVIDIA driver is fine: say so calmly.
    const noDriver = !v.gpu_count && v.errors && v.errors.length
      && v.errors.every((e) => /NVML|nvidia-smi|driver/i.test(e));
    const why = v.reason ? `<span class="why">${esc(v.reason)}</span>`
      : noDriver ? `<span class="calm" title="${esc(v.errors.join("\n"))}">${esc(t("no NVIDIA GPU or driver: host metrics only"))}</span>`
      : v.errors && v.errors.length ? `<span class="why" title="${esc(v.errors.join("\n"))}">${esc(v.errors[0])}</span>` : "";
    const memUsed = v.memory_used_bytes, memTot = v.memory_total_bytes;
    const load = v.load1 === null ? "N/A" : v.load1.toFixed(1);
    const loadPct = v.load1 !== null && v.cpu_count ? ratio(v.load1, v.cpu_count) : null;
    const free = v.free_gpu_count;
    return `<div class="hname"><div class="line1"><span class="dot st-${v.status}" title="${v.status}"></span>`
      + `<a href="/hosts/${encodeURIComponent(v.name)}" title="${esc(v.name)}">${esc(v.name)}</a>${badge}`
      + `<a class="alert-badges host-alerts" href="/alerts?q=${encodeURIComponent(v.name)}" hidden></a></div>`
      + `<span class="sub" title="${esc(sub)}">${esc(sub)}</span>${why}</div>`
      + `<div class="hgpu"><div class="model" title="${esc(v.gpu_models.join(", "))}">${v.gpu_count ? `${v.gpu_count} × ` : ""}${esc(models)}</div>`
      + (v.gpu_count ? (v.status === "offline"
        ? `<div><span class="free none">${esc(t("down"))}</span> (${esc(t("{n} GPUs", { n: v.gpu_count }))})</div>`
        : `<div><span class="free${free ? "" : " none"}">${esc(t("{n} free", { n: free }))}</span> ${esc(t("of {total}", { total: v.gpu_count }))}</div>`) : "")
      + `</div>`
      + `<div class="hres">`
      + mini("CPU", v.cpu_percent, pct(v.cpu_percent))
      + mini(esc(t("Load")), loadPct, load)
      + mini(esc(t("Mem")), ratio(memUsed, memTot), memTot ? `${gShort(memUsed)}/${gShort(memTot)}` : "N/A")
      + mini(esc(t("Disk")), ratio(v.disk_used_bytes, v.disk_total_bytes), pct(ratio(v.disk_used_bytes, v.disk_total_bytes)))
      + `</div>`
      + `<div class="gpus">${v.gpus.map((g) => gpuCell(g, (v.queue_gpus || []).includes(g.index))).join("")}</div>`;
  }

  function renderRow(name) {
    const v = views.get(name);
    let row = rows.get(name);
    if (!row) {
      row = document.createElement("div");
      row.dataset.host = name;
      rows.set(name, row);
    }
    const show = matches(v, filters);
    row.hidden = !show;
    if (!show) { row.dirty = true; return; } // drawn when it shows again
    row.className = `host st-${v.status}`;
    row.dataset.lastSeen = v.last_seen ?? "";
    row.innerHTML = rowHTML(v);
    GFAlerts.render(row.querySelector(".host-alerts"), hostAlerts[name]);
    row.dirty = false;
  }

  function placeRows(force) {
    const names = sortedNames();
    const same = !force && names.length === order.length && names.every((n, i) => n === order[i]);
    if (!same) {
      const frag = document.createDocumentFragment();
      for (const n of names) frag.appendChild(rows.get(n));
      hostsEl.appendChild(frag);
      order = names;
    }
    lastSort = Date.now();
  }

  function refreshCount() {
    let shown = 0;
    for (const r of rows.values()) if (!r.hidden) shown++;
    document.getElementById("shown").textContent = t("{shown} of {total} hosts", { shown, total: views.size });
    const empty = document.getElementById("empty");
    if (empty) {
      empty.hidden = shown > 0;
      empty.textContent = views.size ? t("No host matches these filters.") : t("No host has reported yet.");
      hostsEl.appendChild(empty);
    }
  }

  function renderTotals(tot) {
    const h = tot.hosts, g = tot.gpus;
    document.querySelector("#tot-hosts .v").innerHTML =
      `<span class="n"><span class="big">${h.online}</span> ${esc(t("online"))}</span>`
      + `<span class="n">${h.stale} ${esc(t("stale"))}</span><span class="n">${h.offline} ${esc(t("offline"))}</span>`;
    document.querySelector("#tot-gpus .v").innerHTML =
      `<span class="n"><span class="big" id="gpus-in-use">${g.in_use}</span> ${esc(t("in use"))}</span>`
      + `<span class="n"><span class="big" id="gpus-free">${g.free}</span> ${esc(t("free"))}</span>`
      + `<span class="n">${g.down} ${esc(t("down"))}</span><span class="n" title="${esc(t("held but idle"))}">${g.idle} ${esc(t("idle"))}</span>`;
    const models = tot.by_model.slice(0, 6).map((m) =>
      `<tr><td title="${esc(m.model)}">${esc(shortModel(m.model))}</td><td>${m.in_use}</td><td>${m.free}</td><td>${m.down}</td><td>${m.total}</td></tr>`).join("");
    document.querySelector("#tot-models .v").innerHTML = tot.by_model.length
      ? `<table><tr><th></th><th>${esc(t("in use"))}</th><th>${esc(t("free"))}</th><th>${esc(t("down"))}</th><th>${esc(t("total"))}</th></tr>${models}</table>` : "—";
    document.querySelector("#tot-users .v").innerHTML = tot.top_users.length
      ? `<div class="chips">${tot.top_users.map((u) => `<a class="chip" href="?user=${encodeURIComponent(u.user)}" data-user="${esc(u.user)}">${esc(u.user)} <b>${u.gpus}</b></a>`).join("")}</div>`
      : esc(t("nobody"));
  }

  // Choices for the model / user / group selects, from what the fleet reports now.
  function refreshChoices() {
    const sets = { model: new Set(), user: new Set(), group: new Set() };
    for (const v of views.values()) {
      v.gpu_models.forEach((m) => sets.model.add(m));
      v.users.forEach((u) => sets.user.add(u));
      if (v.group) sets.group.add(v.group);
    }
    for (const [k, set] of Object.entries(sets)) {
      const sel = form.elements[k];
      const cur = sel.value || sel.dataset.value || "";
      if (cur) set.add(cur);
      const opts = [...set].sort(byName);
      const key = opts.join("\u0000");
      if (sel.dataset.opts === key) continue;
      sel.dataset.opts = key;
      sel.innerHTML = sel.options[0].outerHTML
        + opts.map((o) => `<option${o === cur ? " selected" : ""}>${esc(o)}</option>`).join("");
      if (k === "group") sel.hidden = opts.length === 0;
    }
  }

  function applyFilters() {
    filters = readFilters();
    writeURL();
    for (const [name, row] of rows) {
      const show = matches(views.get(name), filters);
      if (show && (row.hidden || row.dirty)) { row.hidden = false; renderRow(name); }
      else row.hidden = !show;
    }
    placeRows(true);
    refreshCount();
  }

  // ---- live data -------------------------------------------------------------------------
  function onSnapshot(d) {
    const names = new Set(d.hosts.map((v) => v.name));
    for (const n of [...views.keys()]) {
      if (!names.has(n)) { views.delete(n); rows.get(n)?.remove(); rows.delete(n); }
    }
    for (const v of d.hosts) views.set(v.name, v);
    refreshChoices();
    filters = readFilters();
    for (const v of d.hosts) renderRow(v.name);
    placeRows(true);
    renderTotals(d.totals);
    refreshCount();
    if (!document.body.dataset.ready) performance.mark("gpufleet-first-render");
    document.body.dataset.ready = "1";
  }

  function onHosts(d) {
    let fresh = false;
    for (const v of d.hosts) {
      if (!views.has(v.name)) fresh = true;
      views.set(v.name, v);
      renderRow(v.name);
    }
    renderTotals(d.totals);
    if (fresh) { refreshChoices(); placeRows(true); refreshCount(); return; }
    if (filters.sort === "name") return;
    // Re-sort by a live number at most every 3 s, so rows do not jump under the reader's eyes.
    if (Date.now() - lastSort > 3000) placeRows(false);
    else if (!sortTimer) sortTimer = setTimeout(() => { sortTimer = null; placeRows(false); }, 3000);
  }

  // "last seen N min ago" for hosts that stopped reporting.
  setInterval(() => {
    for (const [name, v] of views) if (v.status !== "online") renderRow(name);
  }, 10000);

  form.addEventListener("input", applyFilters);
  form.addEventListener("change", applyFilters);
  form.addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
  window.GF_OVERVIEW = { views, rows }; // for tests and the benchmark
  function onAlerts(d) {
    GFAlerts.render(document.getElementById("alert-badges"), d.firing);
    hostAlerts = d.hosts || {};
    for (const [name, row] of rows) GFAlerts.render(row.querySelector(".host-alerts"), hostAlerts[name]);
  }
  GF.connect("/api/v1/stream", { snapshot: onSnapshot, hosts: onHosts, alerts: onAlerts });
})();
