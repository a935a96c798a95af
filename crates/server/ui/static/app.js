// Stackyard dashboard: the little the pages need beyond htmx, with no inline script (the CSP
// forbids it). Everything here is an enhancement; every form works without it.
(function () {
  "use strict";

  // Status events of one stack (`data-events` = the dashboard's proxy of
  // /stacks/:slug/events): each one tells the page's live regions to refresh themselves
  // (`hx-trigger="stack-changed from:body"`).
  var EVENT_KINDS = ["stack.status", "service.status", "release.created", "release.status",
    "env.version", "build.step", "restart.requested", "stack.deleted"];

  function followEvents(el) {
    var source = new EventSource(el.getAttribute("data-events"));
    var changed = function () { htmx.trigger(document.body, "stack-changed"); };
    EVENT_KINDS.forEach(function (kind) { source.addEventListener(kind, changed); });
    source.addEventListener("stack.deleted", function () { source.close(); });
  }

  // A service's log lines (`data-log-stream` = the proxy of /stacks/:slug/logs/:svc), appended
  // as text (never as HTML: the lines are the service's own output). "Pause" keeps the lines
  // that arrive meanwhile and shows them on "Follow".
  var MAX_LINES = 2000;

  function followLogs(pre) {
    var held = [];
    var paused = false;
    var toggle = document.querySelector("[data-log-toggle]");
    var state = document.querySelector("[data-log-state]");
    var append = function (line) {
      pre.appendChild(document.createTextNode(line + "\n"));
      while (pre.childNodes.length > MAX_LINES) { pre.removeChild(pre.firstChild); }
      pre.scrollTop = pre.scrollHeight;
    };
    var source = new EventSource(pre.getAttribute("data-log-stream"));
    source.onmessage = function (e) {
      if (paused) { held.push(e.data); } else { append(e.data); }
    };
    source.onerror = function () {
      if (state) { state.textContent = "reconnecting…"; }
    };
    source.onopen = function () {
      if (state) { state.textContent = paused ? "paused" : "following"; }
    };
    if (toggle) {
      toggle.addEventListener("click", function () {
        paused = !paused;
        toggle.textContent = paused ? "Follow" : "Pause";
        toggle.setAttribute("aria-pressed", paused ? "true" : "false");
        if (state) { state.textContent = paused ? "paused" : "following"; }
        if (!paused) { held.forEach(append); held = []; }
      });
    }
  }

  // "Type the slug to delete": the button stays disabled until the text matches (the server
  // checks the same).
  function confirmBySlug(input) {
    var button = document.getElementById(input.getAttribute("data-confirm-button"));
    var expected = input.getAttribute("data-confirm");
    var check = function () { button.disabled = input.value.trim() !== expected; };
    input.addEventListener("input", check);
    check();
  }

  function start() {
    document.querySelectorAll("[data-events]").forEach(followEvents);
    document.querySelectorAll("[data-log-stream]").forEach(followLogs);
    document.querySelectorAll("[data-confirm]").forEach(confirmBySlug);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
