// The queue page: drawn from /api/v1/jobs (the same function serves the JSON), redrawn when the
// live stream says the queue changed; the form submits through the API.
(function () {
  const { t, tc, esc, duration, connect } = GF;
  const STATES = {
    pending: tc("job state", "pending"), held: tc("job state", "held"),
    dispatching: tc("job state", "dispatching"), running: tc("job state", "running"),
    succeeded: tc("job state", "succeeded"), failed: tc("job state", "failed"),
    oom: tc("job state", "oom"), cancelled: tc("job state", "cancelled"), lost: tc("job state", "lost"),
  };
  const state = (s) => esc(STATES[s] || s);
  const span = (s) => (s === null || s === undefined ? "-" : duration(Math.max(0, s)));
  const when = (at, now) => (at === null || at === undefined ? "-" : at <= now ? t("now") : t("in {duration}", { duration: duration(at - now) }));
  const PENDING = ["pending", "held"], ACTIVE = ["dispatching", "running"];
  const say = GF.say;

  function draw(v) {
    const c = v.counts;
    document.getElementById("queue-counts").textContent =
      t("{pending} pending · {held} held · {running} running · {succeeded} succeeded · {failed} failed · {cancelled} cancelled",
        { pending: c.pending, held: c.held, running: c.dispatching + c.running, succeeded: c.succeeded, failed: c.failed + c.oom + c.lost, cancelled: c.cancelled });
    const s = v.status;
    const err = s.predictor_recent_error === null ? t("no finished job yet") : t("{percent}% mean error on recent jobs", { percent: (100 * s.predictor_recent_error).toFixed(0) });
    document.getElementById("queue-status").textContent =
      t("policy {policy} · dispatcher {dispatcher} · runtime predictor: {error} ({n} jobs learnt)", { policy: s.policy, dispatcher: s.dispatcher, error: err, n: s.predictor_observed });
    const now = v.now;
    const id = (j) => `<td><a href="/api/v1/jobs/${j.id}">${j.id}</a></td>`;
    // the queue cannot take such a job's GPUs back: said beside its name while it waits or runs
    const name = (j) => esc(j.name) + (j.spec && j.spec.preemptible === false ? ` <span class="badge pinned">${esc(t("not preemptible"))}</span>` : "");
    const pending = v.jobs.filter((j) => PENDING.includes(j.state)).map((j) =>
      `<tr data-job="${j.id}" data-state="${j.state}">${id(j)}<td>${name(j)}</td><td>${esc(j.user)}</td><td>${j.gpus}</td><td>${state(j.state)}</td>`
      + `<td class="reason">${esc(say(j.waiting_reason_i18n || j.waiting_reason))}</td><td>${span(j.waited_seconds)}</td><td>${when(j.projected_start_seconds, now)}</td><td>${span(j.predicted_runtime_seconds)}</td></tr>`);
    const running = v.jobs.filter((j) => ACTIVE.includes(j.state)).map((j) =>
      `<tr data-job="${j.id}" data-state="${j.state}">${id(j)}<td>${name(j)}</td><td>${esc(j.user)}</td>`
      + `<td>${(j.placement || []).map((p) => `<a href="/hosts/${encodeURIComponent(p.host)}">${esc(p.host)}</a>: ${p.gpu_indices.join(",")}`).join("; ")}</td>`
      + `<td>${state(j.state)}</td><td>${span(j.elapsed_seconds)}</td><td>${when(j.predicted_end_seconds, now)}</td></tr>`);
    const history = v.jobs.filter((j) => !PENDING.includes(j.state) && !ACTIVE.includes(j.state)).map((j) =>
      `<tr data-job="${j.id}" data-state="${j.state}">${id(j)}<td>${esc(j.name)}</td><td>${esc(j.user)}</td><td>${state(j.state)}</td><td>${esc(j.reason)}</td>`
      + `<td>${span(j.runtime_seconds)}</td><td>${span(j.predicted_runtime_seconds)}</td><td>${j.end_seconds ? esc(t("{duration} ago", { duration: duration(now - j.end_seconds) })) : "-"}</td></tr>`);
    const fill = (sel, rows, empty, cols) => {
      document.querySelector(`${sel} tbody`).innerHTML = rows.join("") || `<tr><td colspan="${cols}" class="muted">${esc(empty)}</td></tr>`;
    };
    fill("#pending-table", pending, t("Nothing waits."), 9);
    fill("#running-table", running, t("Nothing runs."), 7);
    fill("#history-table", history, t("No job has finished yet."), 8);
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
      out.textContent = r.ok ? t("submitted job {id}", { id: body.id }) : t("error: {error}", { error: body.error.message });
      out.dataset.ok = r.ok ? "1" : "0";
      if (r.ok) out.dataset.job = body.id;
      refresh();
    });
  }
})();
