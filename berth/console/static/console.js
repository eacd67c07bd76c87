// Berth console: live charts (uPlot), polled from /console/series/...: requests/s and p99 of
// traffic, and a version's accuracy (or MAE) with its labelled predictions per hour.
// What the charts show is also in the page's tables; without scripts nothing is lost.
(function () {
  "use strict";
  var POLL_MS = 5000;
  var ACCURACY_POLL_MS = 60000;  // hourly buckets: a minute is live enough

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

  function accuracyOptions(width, metric) {
    var percent = metric === "accuracy";
    var name = percent ? "accuracy %" : "MAE";
    return {
      width: width,
      height: 220,
      series: [
        {},
        { label: name, stroke: color("--part-0"), width: 2, scale: "metric", spanGaps: false,
          points: { show: true },
          value: function (u, v) { return v == null ? "—" : v.toFixed(percent ? 1 : 4); } },
        { label: "labelled", stroke: color("--part-1"), width: 2, scale: "n",
          value: function (u, v) { return v == null ? "—" : String(v); } }
      ],
      axes: [
        { stroke: color("--muted") },
        { scale: "metric", label: name, stroke: color("--muted") },
        { scale: "n", side: 1, label: "labelled", stroke: color("--muted"), grid: { show: false } }
      ],
      scales: percent ? { x: { time: true }, metric: { range: [0, 100] } } : { x: { time: true } }
    };
  }

  function trafficColumns(data) {
    return { columns: [data.t, data.rps, data.p99_ms], wait: data.t.length < 2 ? "Collecting readings…" : "" };
  }

  function accuracyColumns(data) {
    var percent = data.metric === "accuracy";
    var values = data.value.map(function (v) { return v == null ? null : (percent ? v * 100 : v); });
    var judged = data.value.some(function (v) { return v != null; });
    return { columns: [data.t, values, data.labelled], wait: judged ? "" : "No feedback in this span yet." };
  }

  function start(element) {
    var url = element.getAttribute("data-chart");
    var accuracy = element.getAttribute("data-chart-kind") === "accuracy";
    var chart = null;
    var status = element.querySelector(".chart-status");

    function draw(data) {
      var found = accuracy ? accuracyColumns(data) : trafficColumns(data);
      if (status) { status.textContent = found.wait; }
      // One reading alone draws no line and stretches the time axis over years: wait for two.
      if (chart === null && data.t.length < 2) { return; }
      if (chart === null) {
        var width = element.clientWidth || 600;
        chart = new uPlot(accuracy ? accuracyOptions(width, data.metric) : options(width),
                          found.columns, element);
      } else {
        chart.setData(found.columns);
      }
    }

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) { draw(data); } })
        .catch(function () {});
    }

    poll();
    setInterval(poll, accuracy ? ACCURACY_POLL_MS : POLL_MS);
    window.addEventListener("resize", function () {
      if (chart !== null) { chart.setSize({ width: element.clientWidth, height: 220 }); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (typeof uPlot === "undefined") { return; }
    document.querySelectorAll("[data-chart]").forEach(start);
  });
})();
