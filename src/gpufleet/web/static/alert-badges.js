// gpufleet: alert badges (firing alerts by severity, silenced and inhibited ones left out),
// drawn from the live stream's "alerts" event (gpufleet.alerts.service.badges).
const GFAlerts = (() => {
  const SEVERITIES = ["critical", "warning", "info"];
  const WORDS = { critical: GF.t("critical"), warning: GF.t("warning"), info: GF.t("info") };
  function render(el, counts) {
    if (!el) return;
    const c = counts || {};
    const shown = SEVERITIES.filter((s) => c[s] > 0);
    el.innerHTML = shown
      .map((s) => `<span class="abadge sev-${s}" data-severity="${s}">${c[s]} ${GF.esc(WORDS[s])}</span>`)
      .join("");
    el.dataset.total = String(SEVERITIES.reduce((n, s) => n + (c[s] || 0), 0));
    el.title = shown.length ? GF.t("alerts firing: see /alerts") : GF.t("no alert firing");
    el.hidden = shown.length === 0;
  }
  return { render };
})();
