// Live updates of the recent-postbacks list: ask every second for rows newer than the
// newest shown (with the page's filters) and put them on top. Values are set as text,
// never as HTML: every one of them came from an unauthenticated sender.
"use strict";

(function () {
  const table = document.getElementById("postbacks");
  if (!table) return;
  const body = table.tBodies[0];
  const live = document.getElementById("live");
  const filters = new URLSearchParams(window.location.search);
  const columns = ["route", "outcome", "reason", "status", "ymid", "telegram_id",
                   "event_type", "client", "latency_ms"];
  const kept = 1000; // rows on the page at most
  let newest = Number(table.dataset.newest || "0");

  function rowFor(postback) {
    const row = document.createElement("tr");
    row.dataset.number = String(postback.number);
    row.className = postback.outcome;
    const time = document.createElement("td");
    const link = document.createElement("a");
    link.href = "/postbacks/" + encodeURIComponent(String(postback.number));
    link.textContent = postback.at;
    time.appendChild(link);
    row.appendChild(time);
    for (const column of columns) {
      const cell = document.createElement("td");
      cell.textContent = String(postback[column]);
      if (column === "ymid") cell.className = "ymid";
      row.appendChild(cell);
    }
    return row;
  }

  async function poll() {
    if (document.hidden) return;
    const query = new URLSearchParams(filters);
    query.set("after", String(newest));
    try {
      const response = await fetch("/postbacks.json?" + query.toString(),
                                   {credentials: "same-origin", cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const answer = await response.json();
      const rows = answer.rows;
      for (let index = rows.length - 1; index >= 0; index -= 1) {
        body.insertBefore(rowFor(rows[index]), body.firstChild);
      }
      while (body.rows.length > kept) body.deleteRow(-1);
      newest = Math.max(newest, answer.newest);
      live.textContent = "live";
      live.className = "live";
    } catch (error) {
      live.textContent = "not updating: " + error.message;
      live.className = "live stale";
    }
  }

  window.setInterval(poll, 1000);
})();
