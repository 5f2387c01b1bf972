// The /recommend page: copy buttons for the ssh lines (the answer itself is rendered by the
// server from the same function as POST /api/v1/recommendations).
(function () {
  "use strict";
  document.querySelectorAll("button.copy").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var text = btn.getAttribute("data-copy") || "";
      var done = function () { btn.textContent = GF.t("copied"); setTimeout(function () { btn.textContent = GF.t("copy"); }, 1500); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () {});
      } else {
        var ta = document.createElement("textarea");
        ta.value = text; document.body.appendChild(ta); ta.select();
        try { document.execCommand("copy"); done(); } catch (e) { /* nothing to do */ }
        document.body.removeChild(ta);
      }
    });
  });
})();
