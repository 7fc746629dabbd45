// FlowStone UI: live updates by polling the JSON API (no third-party code).
"use strict";

(function () {
  const PERIOD = 1000;

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) throw new Error(url + ": " + response.status);
    return response.json();
  }

  function setBar(box, percent) {
    const svg = box.querySelector("svg.bar");
    if (svg) {
      svg.querySelector("rect.fill").setAttribute("width", String(percent));
      svg.setAttribute("aria-valuenow", String(percent));
    }
    const label = box.querySelector(".pct");
    if (label) label.textContent = percent + "%";
  }

  function poll(element, url, update) {
    let stopped = false;
    async function tick() {
      if (stopped) return;
      try {
        stopped = update(await getJSON(url)) === true;
      } catch (err) {
        element.classList.add("stale");
      }
      if (!stopped) window.setTimeout(tick, PERIOD);
    }
    window.setTimeout(tick, PERIOD);
  }

  function text(value) {
    return value === null || value === undefined ? "?" : String(value);
  }

  document.querySelectorAll("[data-poll-scatter]").forEach(function (box) {
    poll(box, box.dataset.pollScatter, function (s) {
      setBar(box, s.percent);
      const counts = box.querySelector(".counts");
      if (counts) {
        let line = (s.succeeded + s.failed) + "/" + text(s.total) + " items · " + s.succeeded + " succeeded · " +
          s.failed + " failed · " + s.running + " running · " + s.pending + " pending";
        if (s.rate_per_s) line += " · " + s.rate_per_s + "/s";
        if (s.eta_s) line += " · ETA " + s.eta_s + " s";
        counts.textContent = line;
      }
      if (s.finished) box.classList.add("finished");
      return s.finished;
    });
  });

  document.querySelectorAll("[data-poll-backfill]").forEach(function (box) {
    poll(box, box.dataset.pollBackfill, function (b) {
      setBar(box, b.percent);
      const counts = box.querySelector(".counts");
      if (counts) {
        counts.textContent = b.done + "/" + b.total + " · " + b.succeeded + " succeeded · " + b.failed +
          " failed · " + b.skipped + " skipped · " + b.state;
      }
      if (b.state !== "running") box.classList.add("finished");
      return b.state !== "running";
    });
  });

  // a run page reloads when the run's status changes (running -> succeeded, ...)
  document.querySelectorAll("[data-poll-run]").forEach(function (el) {
    const shown = el.dataset.status;
    if (shown !== "running" && shown !== "waiting") return;
    poll(el, el.dataset.pollRun, function (detail) {
      if (detail.run.status !== shown) {
        window.location.replace(window.location.pathname);
        return true;
      }
      return false;
    });
  });

  // the asset graph recolours its nodes as states change
  document.querySelectorAll("[data-poll-graph]").forEach(function (box) {
    poll(box, box.dataset.pollGraph, function (graph) {
      graph.nodes.forEach(function (node) {
        const g = box.querySelector('g.node[data-asset="' + CSS.escape(node.name) + '"]');
        if (!g) return;
        g.classList.forEach(function (c) { if (c.startsWith("st-")) g.classList.remove(c); });
        g.classList.add("st-" + (node.state || "none"));
      });
      return false;
    });
  });
})();
