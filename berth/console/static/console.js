// Berth console: live charts of requests/s and p99 (uPlot), polled from /console/series/...
// Everything the chart shows is also in the page's tables; without scripts nothing is lost.
(function () {
  "use strict";
  var POLL_MS = 5000;

  function color(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  function options(width) {
    return {
      width: width,
      height: 220,
      series: [
        {},
        { label: "requests/s", stroke: color("--part-0"), width: 2, scale: "rps",
          value: function (u, v) { return v == null ? "—" : v.toFixed(2); } },
        { label: "p99 ms", stroke: color("--part-1"), width: 2, scale: "ms",
          value: function (u, v) { return v == null ? "—" : v.toFixed(1); } }
      ],
      axes: [
        { stroke: color("--muted") },
        { scale: "rps", label: "requests/s", stroke: color("--muted") },
        { scale: "ms", side: 1, label: "p99 ms", stroke: color("--muted"), grid: { show: false } }
      ],
      scales: { x: { time: true } }
    };
  }

  function start(element) {
    var url = element.getAttribute("data-chart");
    var chart = null;
    var status = element.querySelector(".chart-status");

    function draw(data) {
      var columns = [data.t, data.rps, data.p99_ms];
      if (status) {
        status.textContent = data.t.length < 2 ? "Collecting readings…" : "";
      }
      // One reading alone draws no line and stretches the time axis over years: wait for two.
      if (chart === null && data.t.length < 2) { return; }
      if (chart === null) {
        chart = new uPlot(options(element.clientWidth || 600), columns, element);
      } else {
        chart.setData(columns);
      }
    }

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) { draw(data); } })
        .catch(function () {});
    }

    poll();
    setInterval(poll, POLL_MS);
    window.addEventListener("resize", function () {
      if (chart !== null) { chart.setSize({ width: element.clientWidth, height: 220 }); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (typeof uPlot === "undefined") { return; }
    document.querySelectorAll("[data-chart]").forEach(start);
  });
})();
