// Live refresh for the stagerunner dashboard (no build step, no dependencies).
// Every few seconds it fetches this same page and swaps in the parts marked data-live, so
// counts, lists and a task's status move without a reload. The server escapes everything;
// nothing here builds HTML. Pages work without this script (they are plain HTML).
(function () {
  "use strict";
  var period = Number(document.body.getAttribute("data-refresh")) || 0;
  var toggle = document.getElementById("live-toggle");
  var status = document.getElementById("live-status");

  // Forms marked data-confirm ask first (cancel, pause, retry-all); without JS they just post.
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  if (!period || !window.fetch || !window.DOMParser) { return; }
  document.getElementById("live").hidden = false;
  if (window.localStorage && localStorage.getItem("sr-live") === "off") { toggle.checked = false; }
  toggle.addEventListener("change", function () {
    if (window.localStorage) { localStorage.setItem("sr-live", toggle.checked ? "on" : "off"); }
  });

  function show(text, stale) {
    status.textContent = text;
    status.className = stale ? "live-status stale" : "live-status";
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    document.querySelectorAll("[data-live]").forEach(function (part) {
      var next = fresh.getElementById(part.id);
      // unchanged parts stay, so a selection in a traceback survives the refresh
      if (next && next.innerHTML !== part.innerHTML) { part.replaceWith(document.importNode(next, true)); }
    });
  }

  function refresh() {
    if (document.hidden || !toggle.checked) { return setTimeout(refresh, period); }
    fetch(location.href, { headers: { "X-Live": "1" }, credentials: "same-origin", cache: "no-store", redirect: "error" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) { swap(html); show("updated " + new Date().toLocaleTimeString(), false); })
      .catch(function () { show("not updating: server unreachable", true); })
      .then(function () { setTimeout(refresh, period); });
  }
  setTimeout(refresh, period);
})();
