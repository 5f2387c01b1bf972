// The queue page: drawn from /api/v1/jobs (the same function serves the JSON), redrawn when the
// live stream says the queue changed; the form submits through the API.
(function () {
  const { esc, duration, connect } = GF;
  const span = (s) => (s === null || s === undefined ? "-" : duration(Math.max(0, s)));
  const when = (t, now) => (t === null || t === undefined ? "-" : t <= now ? "now" : `in ${duration(t - now)}`);
  const PENDING = ["pending", "held"], ACTIVE = ["dispatching", "running"];

  function draw(v) {
    const c = v.counts;
    document.getElementById("queue-counts").textContent =
      `${c.pending} pending · ${c.held} held · ${c.dispatching + c.running} running · ${c.succeeded} succeeded · ${c.failed + c.oom + c.lost} failed · ${c.cancelled} cancelled`;
    const s = v.status;
    const err = s.predictor_recent_error === null ? "no finished job yet" : `${(100 * s.predictor_recent_error).toFixed(0)}% mean error on recent jobs`;
    document.getElementById("queue-status").textContent =
      `policy ${s.policy} · dispatcher ${s.dispatcher} · runtime predictor: ${err} (${s.predictor_observed} jobs learnt)`;
    const now = v.now;
    const id = (j) => `<td><a href="/api/v1/jobs/${j.id}">${j.id}</a></td>`;
    const pending = v.jobs.filter((j) => PENDING.includes(j.state)).map((j) =>
      `<tr data-job="${j.id}" data-state="${j.state}">${id(j)}<td>${esc(j.name)}</td><td>${esc(j.user)}</td><td>${j.gpus}</td><td>${j.state}</td>`
      + `<td class="reason">${esc(j.waiting_reason)}</td><td>${span(j.waited_seconds)}</td><td>${when(j.projected_start_seconds, now)}</td><td>${span(j.predicted_runtime_seconds)}</td></tr>`);
    const running = v.jobs.filter((j) => ACTIVE.includes(j.state)).map((j) =>
      `<tr data-job="${j.id}" data-state="${j.state}">${id(j)}<td>${esc(j.name)}</td><td>${esc(j.user)}</td>`
      + `<td>${(j.placement || []).map((p) => `<a href="/hosts/${encodeURIComponent(p.host)}">${esc(p.host)}</a>: ${p.gpu_indices.join(",")}`).join("; ")}</td>`
      + `<td>${j.state}</td><td>${span(j.elapsed_seconds)}</td><td>${when(j.predicted_end_seconds, now)}</td></tr>`);
    const history = v.jobs.filter((j) => !PENDING.includes(j.state) && !ACTIVE.includes(j.state)).map((j) =>
      `<tr data-job="${j.id}" data-state="${j.state}">${id(j)}<td>${esc(j.name)}</td><td>${esc(j.user)}</td><td>${j.state}</td><td>${esc(j.reason)}</td>`
      + `<td>${span(j.runtime_seconds)}</td><td>${span(j.predicted_runtime_seconds)}</td><td>${j.end_seconds ? `${duration(now - j.end_seconds)} ago` : "-"}</td></tr>`);
    const fill = (sel, rows, empty, cols) => {
      document.querySelector(`${sel} tbody`).innerHTML = rows.join("") || `<tr><td colspan="${cols}" class="muted">${empty}</td></tr>`;
    };
    fill("#pending-table", pending, "Nothing waits.", 9);
    fill("#running-table", running, "Nothing runs.", 7);
    fill("#history-table", history, "No job has finished yet.", 8);
  }

  let pending = null;
  async function refresh() {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        const r = await fetch("/api/v1/jobs", { headers: { Accept: "application/json" } });
        if (r.ok) draw(await r.json());
      } catch (e) { /* the next change redraws */ }
    }, 200);
  }

  draw(JSON.parse(document.getElementById("queue-data").textContent));
  connect("/api/v1/stream", { snapshot: refresh, queue: refresh, hosts: () => {} });
  setInterval(refresh, 10000); // elapsed times and projections move with the clock

  const form = document.getElementById("submit-form");
  if (form) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const out = document.getElementById("submit-result");
      const r = await fetch("/api/v1/jobs", { method: "POST", body: new URLSearchParams(new FormData(form)) });
      const body = await r.json();
      out.textContent = r.ok ? `submitted job ${body.id}` : `error: ${body.error.message}`;
      out.dataset.ok = r.ok ? "1" : "0";
      if (r.ok) out.dataset.job = body.id;
      refresh();
    });
  }
})();
