// gpufleet host page: history charts (ECharts), GPUs now, process table; live over SSE.
"use strict";

(() => {
  const { t, esc, bytes, gShort, pct, ratio, GiB } = GF;
  const initial = JSON.parse(document.getElementById("host-state").textContent);
  const name = initial.name;
  const RANGES = { "1h": 3600, "6h": 6 * 3600, "1d": 86400, "1w": 7 * 86400 };
  let range = new URLSearchParams(location.search).get("range");
  if (!(range in RANGES)) range = "1h";

  // chart id -> [metric, scale (divide by), label, host series name]
  const CHARTS = {
    gpu_util: [["gpu.utilization_gpu_percent", 1]],
    gpu_mem: [["gpu.memory_used_bytes", GiB]],
    gpu_temp: [["gpu.temperature_celsius", 1]],
    gpu_power: [["gpu.power_watts", 1]],
    cpu: [["host.cpu_percent", 1, "CPU"]],
    mem: [["host.memory_used_bytes", GiB, t("used")]],
    disk: [["host.disk_used_bytes", GiB, t("used")]],
    net: [["host.net_rx_bytes_per_second", 1e6, t("receive")], ["host.net_tx_bytes_per_second", 1e6, t("send")]],
  };
  const PALETTE = ["#2f6fde", "#2f9e6e", "#d9822b", "#c2413a", "#7b4bc4", "#1b9aaa", "#b7791f", "#5b6478",
    "#e05297", "#6a994e", "#386fa4", "#bc6c25"];
  const charts = {};
  const gib = (v) => (v >= 1024 ? `${+(v / 1024).toFixed(1)} TiB` : `${+v.toFixed(1)} GiB`);
  const AXIS = { gpu_mem: gib, mem: gib, disk: gib, gpu_util: "{value}%", cpu: "{value}%",
    gpu_temp: "{value} °C", gpu_power: "{value} W", net: "{value} MB/s" };

  function chartFor(id) {
    if (!window.echarts) return null;
    if (!charts[id]) {
      const el = document.getElementById(`chart-${id}`);
      charts[id] = echarts.init(el, null, { renderer: "canvas" });
      charts[id].setOption({
        animation: false,
        color: PALETTE,
        grid: { left: 62, right: 12, top: 24, bottom: 24 },
        legend: { type: "scroll", top: 0, right: 0, itemWidth: 10, itemHeight: 6, itemGap: 6,
          textStyle: { fontSize: 10 }, formatter: (n) => n.replace(/^GPU /, "") },
        tooltip: { trigger: "axis", valueFormatter: (v) => (v === null || v === undefined ? "N/A" : +v.toFixed(2)) },
        xAxis: { type: "time", axisLabel: { fontSize: 10, hideOverlap: true } },
        yAxis: { type: "value", axisLabel: { fontSize: 10, formatter: AXIS[id] }, splitLine: { lineStyle: { color: "#eef0f3" } },
          min: id === "gpu_util" || id === "cpu" ? 0 : undefined, max: id === "gpu_util" || id === "cpu" ? 100 : undefined },
        series: [],
      });
    }
    return charts[id];
  }

  const seriesData = {}; // chart id -> [{name, data: [[ms, v]...]}]

  async function load() {
    const since = `-${range === "1w" ? "7d" : range}`;
    const width = Math.max(200, Math.min(1500, Math.round(document.querySelector(".chart").clientWidth || 600)));
    await Promise.all(Object.entries(CHARTS).map(async ([id, metrics]) => {
      const parts = await Promise.all(metrics.map(async ([metric, scale, label]) => {
        const url = `/api/v1/hosts/${encodeURIComponent(name)}/series?metric=${metric}&since=${since}&max_points=${width}`;
        const r = await fetch(url);
        if (!r.ok) return [];
        const body = await r.json();
        return body.series.map((s) => ({
          name: s.gpu === null ? label : `GPU ${s.gpu}`,
          data: s.points.map(([t, v]) => [t * 1000, v === null ? null : v / scale]),
        }));
      }));
      seriesData[id] = parts.flat();
      draw(id);
    }));
    document.body.dataset.charts = "1";
  }

  function draw(id) {
    const c = chartFor(id);
    if (!c) return;
    const now = Date.now();
    c.setOption({
      xAxis: { min: now - RANGES[range] * 1000, max: now },
      series: seriesData[id].map((s) => ({
        name: s.name, type: "line", data: s.data, showSymbol: s.data.length < 8, symbolSize: 4, connectNulls: false,
        sampling: "lttb", lineStyle: { width: 1.3 }, emphasis: { disabled: true },
      })),
    }, { replaceMerge: ["series"] });
  }

  // Live: append the newest sample's values to the charts (the history came from the API).
  const LIVE = {
    gpu_util: (s, g) => g.utilization_gpu_percent,
    gpu_mem: (s, g) => (g.memory_used_bytes === null ? null : g.memory_used_bytes / GiB),
    gpu_temp: (s, g) => g.temperature_celsius,
    gpu_power: (s, g) => g.power_watts,
  };
  let lastLiveTs = 0;
  function appendLive(sample) {
    if (!window.echarts || sample.ts <= lastLiveTs || !Object.keys(seriesData).length) return;
    lastLiveTs = sample.ts;
    const ms = sample.ts * 1000;
    const cut = Date.now() - RANGES[range] * 1000;
    const push = (id, seriesName, v) => {
      let s = seriesData[id].find((x) => x.name === seriesName);
      if (!s) { s = { name: seriesName, data: [] }; seriesData[id].push(s); }
      s.data.push([ms, v]);
      while (s.data.length && s.data[0][0] < cut) s.data.shift();
    };
    for (const [id, fn] of Object.entries(LIVE)) {
      for (const g of sample.gpus) push(id, `GPU ${g.index}`, fn(sample, g));
    }
    const hm = sample.host_metrics;
    push("cpu", "CPU", hm.cpu_percent);
    push("mem", t("used"), hm.memory_used_bytes === null ? null : hm.memory_used_bytes / GiB);
    push("net", t("receive"), hm.net_rx_bytes_per_second === null ? null : hm.net_rx_bytes_per_second / 1e6);
    push("net", t("send"), hm.net_tx_bytes_per_second === null ? null : hm.net_tx_bytes_per_second / 1e6);
    for (const id of Object.keys(CHARTS)) draw(id);
  }

  function renderNow(view, sample) {
    const el = document.getElementById("gpu-now");
    el.innerHTML = (view ? view.gpus : sample.gpus.map((g) => ({ ...g, users: [] }))).map((g) => {
      const mem = ratio(g.memory_used_bytes, g.memory_total_bytes);
      const cls = g.error ? "err" : g.idle ? "idle" : g.free ? "free" : "";
      const who = g.users && g.users.length ? g.users.map((u) => `${u.user} ${gShort(u.gpu_memory_bytes)}`).join(", ") : g.free ? t("free") : "";
      return `<div class="gpu ${cls}" data-gpu="${g.index}"><div class="top"><b>GPU ${g.index}</b>`
        + `<span>${g.temperature_celsius === null ? "N/A" : Math.round(g.temperature_celsius)} °C · ${g.power_watts === null ? "N/A" : Math.round(g.power_watts)} W</span></div>`
        + `<div>${esc(t("util {util} · mem {used}/{total}", { util: pct(g.utilization_gpu_percent), used: gShort(g.memory_used_bytes) || "N/A", total: gShort(g.memory_total_bytes) || "N/A" }))}</div>`
        + `<div class="bar u"><i style="width:${g.utilization_gpu_percent ?? 0}%"></i></div>`
        + `<div class="bar m"><i style="width:${mem ?? 0}%"></i></div>`
        + `<div class="who">${g.idle ? `<span class="idle-t">${esc(t("idle"))}</span> ` : ""}${esc(who)}</div>`
        + (g.error ? `<div class="who">${esc(t("error: {error}", { error: g.error }))}</div>` : "")
        + `</div>`;
    }).join("") || `<p>${esc(t("No GPU."))}</p>`;
  }

  function renderProcs(sample) {
    const body = document.querySelector("#procs tbody");
    const procs = [...sample.processes].sort((a, b) => a.gpu_index - b.gpu_index || (b.gpu_memory_bytes || 0) - (a.gpu_memory_bytes || 0));
    body.innerHTML = procs.map((p) => {
      const user = p.user || (p.uid !== null ? `uid ${p.uid}` : "N/A");
      const container = p.container_name || p.container_id ? `${esc(p.container_name || p.container_id.slice(0, 12))}${p.container_runtime ? ` (${p.container_runtime})` : ""}` : "";
      const since = p.started_at ? `${new Date(p.started_at * 1000).toLocaleString()} (${GF.duration(sample.ts - p.started_at)})` : "N/A";
      return `<tr><td>${esc(user)}</td><td>${p.gpu_index}</td><td class="num">${bytes(p.gpu_memory_bytes)}</td>`
        + `<td class="cmd" title="${esc(p.command)}">${esc(p.command)}</td><td>${container}</td><td class="num">${p.pid}</td><td>${since}</td></tr>`;
    }).join("") || `<tr><td colspan="7">${esc(t("No GPU process."))}</td></tr>`;
  }

  function renderStatus(summary) {
    document.getElementById("h-status-dot").className = `dot st-${summary.status}`;
    let text = t({ online: "online", stale: "stale", offline: "offline" }[summary.status] || summary.status);
    if (summary.status !== "online") text += ` · ${t("last seen {ago}", { ago: GF.ago(summary.last_received) })}`;
    if (summary.reason) text += ` · ${summary.reason}`;
    document.getElementById("h-status").textContent = text;
  }

  function onHost(d) {
    if (!d) return;
    renderStatus(d.summary);
    renderNow(d.view, d.sample);
    renderProcs(d.sample);
    appendLive(d.sample);
  }

  for (const b of document.querySelectorAll(".ranges button")) {
    b.addEventListener("click", () => {
      range = b.dataset.range;
      for (const x of document.querySelectorAll(".ranges button")) x.setAttribute("aria-pressed", String(x === b));
      const p = new URLSearchParams(location.search);
      p.set("range", range);
      history.replaceState(null, "", `?${p}`);
      load();
    });
  }
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));

  renderNow(null, initial.sample);
  renderProcs(initial.sample);
  const onAlerts = (d) => GFAlerts.render(document.getElementById("alert-badges"), d.hosts[name]);
  load().then(() => GF.connect(`/api/v1/stream?host=${encodeURIComponent(name)}`,
    { host: onHost, alerts: onAlerts }));
  window.GF_HOST = { charts, seriesData };
})();
