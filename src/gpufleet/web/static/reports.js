// gpufleet reports and "my usage": charts (ECharts) and tables from GET /api/v1/reports.
// The form's choices go to the address bar (a report is a link); the page asks the API, the
// one source of truth, and the CSV/JSON links are the same API call.
"use strict";

(() => {
  const { t, esc } = GF;
  const root = document.getElementById("report");
  const form = document.getElementById("report-form");
  const meta = document.getElementById("r-meta");
  const mode = root ? root.dataset.mode : null; // "fleet" (/reports) | "me" (/me/usage)
  const PALETTE = ["#2f6fde", "#2f9e6e", "#d9822b", "#c2413a", "#7b4bc4", "#1b9aaa", "#b7791f",
    "#5b6478", "#e05297", "#6a994e", "#9aa3b2"];
  const TOP = 10; // keys stacked in the chart; the rest summed as "other"
  const MAX_ROWS = 500; // table rows shown; the CSV has them all
  const charts = {};
  let seq = 0;

  const num = (v, d = 1) => (v === null || v === undefined ? "–" : v.toLocaleString("en-US",
    { minimumFractionDigits: d, maximumFractionDigits: d }));
  const signed = (v, d = 0, unit = "%") => (v === null || v === undefined ? "–"
    : `${v > 0 ? "+" : v < 0 ? "−" : "±"}${num(Math.abs(v), d)}${unit}`);
  const cls = (v) => (v === null || v === undefined || v === 0 ? "" : v > 0 ? "up" : "down");

  function choice() {
    const fd = new FormData(form);
    const c = {};
    for (const k of ["user", "period", "by", "from", "to"]) {
      const v = (fd.get(k) || "").trim();
      if (v) c[k] = v;
    }
    if (mode === "me") c.by = "user";
    return c;
  }

  function apiUrl(c, extra = {}) {
    const q = new URLSearchParams({ period: c.period, by: c.by });
    if (c.from) q.set("from", c.from);
    if (c.to) q.set("to", c.to);
    if (mode === "me") q.set("key", root.dataset.keys);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return `/api/v1/reports?${q}`;
  }

  function chart(id) {
    const el = document.getElementById(`chart-${id}`);
    if (!window.echarts || !el) return null;
    if (!charts[id]) charts[id] = echarts.init(el, null, { renderer: "canvas" });
    return charts[id];
  }

  // -- stacked GPU-hours per key over the periods ------------------------------------------------
  function drawStacked(rep) {
    const periods = [...new Set(rep.rows.map((r) => r.period_start))].sort();
    const total = {};
    for (const r of rep.rows) total[r.key] = (total[r.key] || 0) + (r.gpu_hours || 0);
    const keys = Object.keys(total).sort((a, b) => total[b] - total[a] || (a < b ? -1 : 1));
    const top = keys.slice(0, TOP);
    const idx = Object.fromEntries(periods.map((p, i) => [p, i]));
    const data = Object.fromEntries(top.map((k) => [k, periods.map(() => 0)]));
    const other = periods.map(() => 0);
    for (const r of rep.rows) (data[r.key] || other)[idx[r.period_start]] += r.gpu_hours || 0;
    const names = [...top];
    const otherName = t("other");
    if (keys.length > TOP) { names.push(otherName); data[otherName] = other; }
    const el = document.getElementById("chart-stacked");
    el.dataset.series = names.join(",");
    el.dataset.periods = periods.join(",");
    document.getElementById("cap-stacked").textContent =
      t("GPU-hours held per {period}, stacked by {by}", { period: rep.period === "custom" ? t("range") : periodLabel(rep.period), by: label(rep.by) }) +
      (keys.length > TOP ? t(" (top {n}, the rest as “other”)", { n: TOP }) : "");
    const c = chart("stacked");
    if (!c) return;
    c.setOption({
      animation: false, color: PALETTE,
      grid: { left: 60, right: 16, top: 34, bottom: 28 },
      legend: { type: "scroll", top: 0, left: 0, right: 0, itemGap: 14, itemWidth: 10, itemHeight: 8, textStyle: { fontSize: 11 } },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v) => `${num(v)} GPU-h` },
      xAxis: { type: "category", data: periods, axisLabel: { fontSize: 10, hideOverlap: true } },
      yAxis: { type: "value", axisLabel: { fontSize: 10 },
        splitLine: { lineStyle: { color: "#eef0f3" } } },
      series: names.map((k) => ({ name: k, type: "bar", stack: "h", barMaxWidth: 48, data: data[k].map((v) => +v.toFixed(3)) })),
    }, true);
  }

  // -- utilisation heat-map, host x day (or week/month for long ranges) ----------------------------
  // The vendored ECharts build has no heat-map series: square scatter symbols coloured by value.
  function heatColor(v) {
    const stops = [[0, [238, 242, 248]], [25, [184, 212, 240]], [50, [98, 160, 225]], [75, [47, 111, 222]], [100, [16, 52, 130]]];
    for (let i = 1; i < stops.length; i++) {
      if (v <= stops[i][0]) {
        const [a, ca] = stops[i - 1], [b, cb] = stops[i];
        const t = (v - a) / (b - a);
        return `rgb(${ca.map((x, j) => Math.round(x + (cb[j] - x) * t)).join(",")})`;
      }
    }
    return "rgb(16,52,130)";
  }

  function heatPeriod(rep) {
    const days = (Date.parse(rep.to) - Date.parse(rep.from)) / 86400000 + 1;
    return days <= 92 ? "day" : days <= 731 ? "week" : "month";
  }

  function drawHeatmap(grid, period) {
    const el = document.getElementById("chart-heatmap");
    const periods = [...new Set(grid.rows.map((r) => r.period_start))].sort();
    const hosts = [...new Set(grid.rows.map((r) => r.key))].sort().reverse();
    el.dataset.hosts = hosts.length;
    el.dataset.periods = periods.length;
    document.getElementById("cap-heatmap").textContent = t("Average utilisation, host × {period}", { period: periodLabel(period) });
    const cell = Math.max(6, Math.min(22, Math.floor(600 / Math.max(hosts.length, 1))));
    el.style.height = `${Math.max(140, hosts.length * cell + 56)}px`;
    const c = chart("heatmap");
    if (!c) return;
    c.resize();
    const pi = Object.fromEntries(periods.map((p, i) => [p, i]));
    const hi = Object.fromEntries(hosts.map((h, i) => [h, i]));
    const w = Math.max(2, (el.clientWidth - 150) / Math.max(periods.length, 1) - 1);
    const data = grid.rows.filter((r) => r.avg_util !== null).map((r) => ({
      value: [pi[r.period_start], hi[r.key], r.avg_util, r.gpu_hours],
      itemStyle: { color: heatColor(r.avg_util) },
    }));
    c.setOption({
      animation: false,
      grid: { left: 130, right: 16, top: 8, bottom: 40 },
      tooltip: { formatter: (p) => `${esc(hosts[p.value[1]])} · ${esc(periods[p.value[0]])}<br>${esc(t("avg util {util}% · {hours} GPU-h held", { util: num(p.value[2]), hours: num(p.value[3]) }))}` },
      xAxis: { type: "category", data: periods, splitLine: { show: false }, axisLabel: { fontSize: 10, hideOverlap: true } },
      yAxis: { type: "category", data: hosts, axisLabel: { fontSize: 10, hideOverlap: true } },
      series: [{ type: "scatter", symbol: "rect", symbolSize: [w, cell - 1], data }],
    }, true);
  }

  // -- long tail: hosts ranked by use --------------------------------------------------------------
  function drawLongTail(rep) {
    const ranked = rep.long_tail.hosts_ranked;
    const el = document.getElementById("chart-longtail");
    el.dataset.hosts = ranked.map((h) => h.host).join(",");
    const c = chart("longtail");
    if (!c) return;
    c.setOption({
      animation: false, color: ["#2f6fde", "#d9822b"],
      grid: { left: 60, right: 50, top: 50, bottom: ranked.length > 30 ? 20 : 70 },
      legend: { top: 0, left: "center", itemGap: 14, itemWidth: 10, itemHeight: 8, textStyle: { fontSize: 11 } },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      xAxis: { type: "category", data: ranked.map((h) => h.host),
        axisLabel: { show: ranked.length <= 30, rotate: 50, fontSize: 10 } },
      yAxis: [
        { type: "value", name: "GPU-h", nameTextStyle: { fontSize: 10 }, axisLabel: { fontSize: 10 }, splitLine: { lineStyle: { color: "#eef0f3" } } },
        { type: "value", name: t("util %"), min: 0, max: 100, nameTextStyle: { fontSize: 10 }, axisLabel: { fontSize: 10 }, splitLine: { show: false } },
      ],
      series: [
        { name: t("GPU-hours held"), type: "bar", barMaxWidth: 36, data: ranked.map((h) => h.gpu_hours),
          tooltip: { valueFormatter: (v) => `${num(v)} GPU-h` } },
        { name: t("average utilisation"), type: "line", yAxisIndex: 1, symbolSize: 4, data: ranked.map((h) => h.avg_util),
          tooltip: { valueFormatter: (v) => `${num(v)}%` } },
      ],
    }, true);
  }

  // -- totals and table ----------------------------------------------------------------------------
  function label(by) {
    const words = { gpu_model: t("GPU model"), gpu: "GPU", host_group: t("host group"), fleet: t("fleet"),
      host: t("host"), user: t("user"), group: t("group"), person: t("person") };
    return words[by] || by.replace(/_/g, " ");
  }
  function periodLabel(p) {
    return { day: t("day"), week: t("week"), month: t("month"), quarter: t("quarter"), year: t("year") }[p] || p;
  }

  function drawTotals(rep) {
    const tot = rep.totals, lt = rep.long_tail;
    const tile = (k, v, id, title = "") => `<div class="tot" id="t-${id}" title="${esc(title)}"><span class="k">${k}</span><span class="big">${v}</span></div>`;
    const held = rep.avg_util_over && rep.avg_util_over.startsWith("held");
    let html = tile(esc(t("GPU-hours held")), num(tot.gpu_hours), "gpu_hours")
      + tile(esc(t("busy GPU-hours")), num(tot.busy_gpu_hours), "busy_gpu_hours", t("utilisation above the busy threshold"))
      + tile(esc(t("held but idle")), `${num(tot.idle_held_hours)} h`, "idle_held_hours", t("memory held, utilisation under the threshold"))
      + tile(`${esc(t("avg utilisation"))} <small>${esc(held ? t("over held GPU time") : t("over all GPU time"))}</small>`, `${num(tot.avg_util)}%`, "avg_util", t("averaged over {what}", { what: rep.avg_util_over || "" }))
      + tile(esc(t("p95 utilisation")), `${num(tot.p95_util, 0)}%`, "p95_util", t("within {n} points", { n: rep.p95_error_bound_percent }))
      + tile(esc(t("memory")), `${num(tot.mem_gb_hours, 0)} GB-h`, "mem_gb_hours")
      + tile(esc(t("energy")), `${num(tot.energy_kwh)} kWh`, "energy_kwh");
    if (mode !== "me" && lt.hosts) {
      html += tile(esc(t("busiest 20% of hosts hold")), lt.busiest_hosts_gpu_hours_share === null ? "–" : `${num(lt.busiest_hosts_gpu_hours_share * 100, 0)}%`, "tail_share", t("of the GPU-hours held"))
        + tile(esc(t("Gini of host util")), num(lt.host_util_gini, 2), "gini", t("0: even, towards 1: concentrated"))
        + tile(esc(t("idle GPU-hours")), num(lt.idle_gpu_hours), "idle_gpu_hours", t("least-used hosts: {hosts} ({hours} h)", { hosts: lt.least_used_hosts.join(", "), hours: num(lt.least_used_idle_gpu_hours) }));
    }
    document.getElementById("r-totals").innerHTML = html;
  }

  function drawTable(rep) {
    const user = ["user", "group", "person"].includes(rep.by);
    const cols = [[t("period"), "period_start"], [label(rep.by), "key"], [t("GPU-h held"), "gpu_hours", 1],
      [t("vs prev"), "gpu_hours_change_percent", "pct"], [t("GPU-h busy"), "busy_gpu_hours", 1],
      [t("idle-held h"), "idle_held_hours", 1], [t("avg util %"), "avg_util", 1], [t("vs prev"), "avg_util_change_points", "pts"],
      ["p95 %", "p95_util", 0], [t("mem GB-h"), "mem_gb_hours", 0], ["kWh", "energy_kwh", 1],
      [t("avail GPU-h"), "availability_hours", 1]];
    if (user) cols.push([t("peak GPUs"), "peak_concurrent_gpus", 0]);
    const rows = [...rep.rows].sort((a, b) => (a.period_start < b.period_start ? 1 : a.period_start > b.period_start ? -1
      : (b.gpu_hours || 0) - (a.gpu_hours || 0) || (a.key < b.key ? -1 : 1)));
    const table = document.getElementById("r-table");
    table.tHead.innerHTML = `<tr>${cols.map(([n, k, d]) => `<th class="${d === undefined ? "" : "num"}" data-col="${k}">${esc(n)}</th>`).join("")}</tr>`;
    const cell = (r, [, k, d]) => {
      const v = r[k];
      if (d === undefined) return `<td>${esc(v)}</td>`;
      if (d === "pct") return `<td class="num chg ${cls(v)}">${signed(v, 0, "%")}</td>`;
      if (d === "pts") return `<td class="num chg ${cls(v)}">${signed(v, 1, "")}</td>`;
      return `<td class="num">${num(v, d)}</td>`;
    };
    table.tBodies[0].innerHTML = rows.length
      ? rows.slice(0, MAX_ROWS).map((r) => `<tr data-key="${esc(r.key)}" data-period="${esc(r.period_start)}">${cols.map((c) => cell(r, c)).join("")}</tr>`).join("")
      : `<tr><td colspan="${cols.length}" class="empty">${esc(rep.rolled_up_until ? t("No usage recorded in this range.") : t("No usage recorded in this range (nothing rolled up yet)."))}</td></tr>`;
    const tot = rep.totals;
    table.tBodies[0].insertAdjacentHTML("beforeend", rows.length ? `<tr class="total-row"><td>${esc(t("total"))}</td><td></td>${cols.slice(2).map((c) => (
      c[2] === "pct" || c[2] === "pts" ? "<td></td>" : cell(tot, c))).join("")}</tr>` : "");
    document.getElementById("r-count").textContent = rows.length > MAX_ROWS
      ? t("showing {shown} of {total} rows: the CSV has them all", { shown: MAX_ROWS, total: rows.length }) : t("{n} rows", { n: rows.length });
  }

  // -- loading ------------------------------------------------------------------------------------
  async function getJson(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await r.json().catch(() => null);
    if (!r.ok) throw new Error(body && body.error ? body.error.message : `${r.status} ${r.statusText}`);
    return body;
  }

  async function load(push) {
    const c = choice();
    const mine = ++seq;
    const query = new URLSearchParams(c).toString();
    if (push) history.replaceState(null, "", `${location.pathname}?${query}`);
    root.dataset.state = "loading";
    meta.textContent = t("Loading…");
    const url = apiUrl(c);
    document.getElementById("dl-csv").href = apiUrl(c, { format: "csv" });
    document.getElementById("dl-json").href = url;
    // the heat-map's call: at once when the range is known, else after the report names it
    const gridOf = (from, to) => {
      const hp = heatPeriod({ from, to });
      const fields = "period_start,key,avg_util,gpu_hours"; // what the heat-map draws
      return getJson(`/api/v1/reports?${new URLSearchParams({ period: hp, by: "host", from, to, fields })}`)
        .then((grid) => [grid, hp]);
    };
    const early = mode === "fleet" && c.from && c.to ? gridOf(c.from, c.to) : null;
    if (early) early.catch(() => {}); // reported below, where it is awaited
    try {
      const rep = await getJson(url);
      if (mine !== seq) return;
      const range = rep.period === "custom" ? "" : t(" per {period}", { period: periodLabel(rep.period) });
      meta.innerHTML = esc(t("{from} to {to} ({timezone}){range}, by {by}", { from: rep.from, to: rep.to, timezone: rep.timezone, range, by: label(rep.by) })) + " · "
        + esc(t("tier {tier} · rolled up until {until}", { tier: rep.tier, until: rep.rolled_up_until || "–" }))
        + (rep.late_hours_waiting ? ` · <b class="late">${esc(t("{n} hour(s) of late data wait for the next rollup", { n: rep.late_hours_waiting }))}</b>` : "")
        + ` · ${num(rep.query_ms, 0)} ms`;
      drawTotals(rep);
      drawStacked(rep);
      drawTable(rep);
      if (mode === "fleet") {
        drawLongTail(rep);
        const [grid, hp] = await (early || gridOf(rep.from, rep.to));
        if (mine !== seq) return;
        drawHeatmap(grid, hp);
      }
      root.dataset.state = "ready";
      root.dataset.loaded = query;
    } catch (e) {
      if (mine !== seq) return;
      root.dataset.state = "error";
      meta.innerHTML = `<span class="warn" id="r-error">${esc(e.message)}</span>`;
    }
    document.body.dataset.ready = "1";
  }

  async function knownUsers() {
    const list = document.getElementById("known-users");
    if (!list) return;
    try {
      const rep = await getJson("/api/v1/reports?period=year&by=user");
      const keys = [...new Set(rep.rows.map((r) => r.key))].sort();
      list.innerHTML = keys.map((k) => `<option value="${esc(k)}">`).join("");
      list.dataset.loaded = keys.length;
    } catch (e) { /* the picker still takes a typed name */ }
  }

  function resizeAll(width) {
    for (const c of Object.values(charts)) c.resize(width ? { width } : undefined);
  }

  const printBtn = document.getElementById("print");
  if (printBtn) printBtn.addEventListener("click", () => window.print());
  window.addEventListener("beforeprint", () => resizeAll(680)); // fits A4/Letter portrait
  window.addEventListener("afterprint", () => resizeAll());
  window.addEventListener("resize", () => resizeAll());

  if (!root) { // "my usage" with nobody picked: only the picker
    knownUsers();
    document.body.dataset.ready = "1";
    return;
  }
  if (mode === "me") knownUsers();
  form.addEventListener("submit", (e) => {
    if (mode === "me" && (new FormData(form).get("user") || "") !== (new URLSearchParams(location.search).get("user") || "")) return; // a new user: the server resolves their Unix users
    e.preventDefault();
    load(true);
  });
  for (const id of ["f-period", "f-by"]) {
    const el = document.getElementById(id);
    if (el) el.addEventListener("change", () => load(true));
  }
  load(false);
})();
