// gpufleet: helpers shared by the pages, and the live connection (EventSource with resync).
"use strict";

const GF = (() => {
  const NA = "N/A";

  // The page's language: its catalogue slice (msgid = the English text) comes in
  // <script id="gf-messages">; t(msgid, params) translates and fills "{name}" placeholders.
  const MESSAGES = (() => {
    try { return JSON.parse(document.getElementById("gf-messages").textContent) || {}; }
    catch (e) { return {}; }
  })();
  const has = (key) => Object.prototype.hasOwnProperty.call(MESSAGES, key);
  const fill = (text, params) => (params
    ? text.replace(/\{(\w+)\}/g, (m, k) => (k in params ? String(params[k]) : m)) : text);
  function t(msgid, params) { return fill(has(msgid) ? MESSAGES[msgid] : msgid, params); }
  // the same English word with two meanings ("held": a GPU held, a job held) gets a context:
  // tc(context, msgid) looks up "context\u0004msgid" (gettext's pgettext convention)
  function tc(context, msgid, params) {
    const key = `${context}\u0004${msgid}`;
    return fill(has(key) ? MESSAGES[key] : msgid, params);
  }
  const lang = document.documentElement.lang || "en";
  const GiB = 1024 ** 3;
  // a message the server sends beside its English (e.g. waiting_reason_i18n, summary_i18n:
  // {id, params, other?, context?}; docs/i18n.md) in the page's language; plain text as it is
  function say(m) {
    if (m === null || m === undefined) return "";
    if (typeof m !== "object") return String(m);
    const p = {};
    for (const [k, v] of Object.entries(m.params || {})) {
      p[k] = Array.isArray(v) ? v.map(say).join(lang === "en" ? "; " : "；") : v !== null && typeof v === "object" ? say(v) : v;
    }
    if (m.context) return tc(m.context, m.id, p);
    return t(m.other && lang === "en" && p.n !== 1 ? m.other : m.id, p);
  }

  function esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, (c) => (
      { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  function bytes(n, digits = 1) {
    if (n === null || n === undefined) return NA;
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(digits)} ${units[i]}`;
  }

  // Short GPU memory: "12G", "512M".
  function gShort(n) {
    if (n === null || n === undefined) return "";
    if (n >= GiB) return `${(n / GiB).toFixed(n >= 10 * GiB ? 0 : 1)}G`;
    return `${Math.round(n / 1024 ** 2)}M`;
  }

  function duration(s) {
    if (s === null || s === undefined) return NA;
    s = Math.max(Math.floor(s), 0);
    if (s < 60) return t("{n} s", { n: s });
    if (s < 3600) return t("{n} min", { n: Math.floor(s / 60) });
    if (s < 86400) return t("{h} h {m} min", { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
    return t("{d} d {h} h", { d: Math.floor(s / 86400), h: Math.floor((s % 86400) / 3600) });
  }

  function pct(v, digits = 0) {
    return v === null || v === undefined ? NA : `${v.toFixed(digits)}%`;
  }

  function ratio(used, total) {
    if (used === null || used === undefined || !total) return null;
    return Math.min(100, Math.max(0, (100 * used) / total));
  }

  function shortModel(name) {
    return String(name || t("unknown")).replace(/^NVIDIA\s+/, "").replace(/^GeForce\s+/, "");
  }

  // The server's clock, estimated from the "now" of the latest message (agents and server
  // may disagree with the browser's clock; "last seen" is measured on the server's).
  let clockOffset = 0;
  function serverNow() { return Date.now() / 1000 + clockOffset; }
  function ago(ts) { return ts ? t("{duration} ago", { duration: duration(serverNow() - ts) }) : t("never"); }

  // A live connection: EventSource reconnects by itself (the server sends "retry:"); each new
  // connection starts with a full snapshot, so nothing missed while away stays wrong. A watchdog
  // reopens a connection that went silent (half-open TCP after a network drop) or was closed.
  function connect(url, handlers) {
    const badge = document.getElementById("live");
    let es = null;
    let lastData = Date.now();
    let lastOpen = 0;
    let backoff = 1000; // doubles while reopening fails (e.g. 401 after the session expired)
    const set = (state, text) => {
      if (badge) { badge.dataset.state = state; badge.textContent = text; }
    };
    function open() {
      if (es) es.close();
      set("connecting", t("connecting…"));
      lastOpen = lastData = Date.now();
      es = new EventSource(url);
      es.onopen = () => { lastData = Date.now(); backoff = 1000; set("live", t("live")); };
      es.onerror = () => set("down", t("reconnecting…"));
      const all = { ping: () => {}, ...handlers };
      for (const [event, fn] of Object.entries(all)) {
        es.addEventListener(event, (e) => {
          lastData = Date.now();
          set("live", t("live"));
          const data = JSON.parse(e.data);
          if (data && data.now) clockOffset = data.now - Date.now() / 1000;
          fn(data);
        });
      }
    }
    setInterval(() => {
      const closed = es && es.readyState === EventSource.CLOSED;
      if ((closed && Date.now() - lastOpen > backoff) || Date.now() - lastData > 40000) {
        if (closed) backoff = Math.min(backoff * 2, 10000);
        open();
      }
    }, 1000);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && es && es.readyState === EventSource.CLOSED) open();
    });
    open();
    return { reopen: open };
  }

  return { t, tc, say, lang, NA, GiB, esc, bytes, gShort, duration, pct, ratio, shortModel, serverNow, ago, connect };
})();
