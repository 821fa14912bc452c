/* The all-results table: sort by a column, filter by text and verdict. Plain JavaScript, no
   library, no network. Cells are set with textContent only, so an archive string is always
   text, never markup. Rows are drawn a page at a time so a 100,000-file run stays responsive. */
(function () {
  "use strict";
  var PAGE = 500;
  var NUMERIC = { prob_ai: true, width: true, height: true, bytes: true };
  var table = document.getElementById("results-table");
  var dataElement = document.getElementById("results-data");
  if (!table || !dataElement) { return; }
  var rows = JSON.parse(dataElement.textContent);
  var headers = Array.prototype.slice.call(table.querySelectorAll("thead th"));
  var columns = headers.map(function (th) { return th.textContent; });
  var verdictIndex = columns.indexOf("verdict");
  var body = table.tBodies[0];
  var filterInput = document.getElementById("filter");
  var verdictSelect = document.getElementById("verdict-filter");
  var matchCount = document.getElementById("match-count");
  var moreButton = document.getElementById("show-more");
  // Lower-cased text of each row, computed once, for filtering.
  var haystacks = rows.map(function (row) {
    return row.map(function (cell) { return cell === null ? "" : String(cell); }).join("\u0001").toLowerCase();
  });
  var state = { text: "", verdict: "", column: -1, descending: false, limit: PAGE };

  function compare(a, b, column) {
    var x = rows[a][column], y = rows[b][column];
    if (x === y) { return a - b; }
    if (x === null || x === "") { return 1; }   // empty cells last in both directions
    if (y === null || y === "") { return -1; }
    var order = NUMERIC[columns[column]] ? x - y : String(x).localeCompare(String(y));
    return (state.descending ? -order : order) || a - b;
  }

  function matching() {
    var needle = state.text.toLowerCase();
    var chosen = [];
    for (var i = 0; i < rows.length; i++) {
      if (state.verdict && rows[i][verdictIndex] !== state.verdict) { continue; }
      if (needle && haystacks[i].indexOf(needle) === -1) { continue; }
      chosen.push(i);
    }
    if (state.column >= 0) {
      chosen.sort(function (a, b) { return compare(a, b, state.column); });
    }
    return chosen;
  }

  function cellText(value, column) {
    if (value === null || value === undefined) { return ""; }
    if (columns[column] === "prob_ai") { return Number(value).toFixed(4); }
    return String(value);
  }

  function render() {
    var chosen = matching();
    var shown = chosen.slice(0, state.limit);
    var fragment = document.createDocumentFragment();
    shown.forEach(function (index) {
      var tr = document.createElement("tr");
      var verdict = rows[index][verdictIndex];
      if (verdict === "ai-generated" || verdict === "real" || verdict === "error") { tr.className = verdict; }
      rows[index].forEach(function (value, column) {
        var td = document.createElement("td");
        td.textContent = cellText(value, column);
        tr.appendChild(td);
      });
      fragment.appendChild(tr);
    });
    body.textContent = "";
    body.appendChild(fragment);
    matchCount.textContent = chosen.length + " of " + rows.length + " rows match" +
      (shown.length < chosen.length ? " (first " + shown.length + " shown)" : "");
    moreButton.hidden = shown.length >= chosen.length;
    headers.forEach(function (th, column) {
      if (column === state.column) {
        th.setAttribute("aria-sort", state.descending ? "descending" : "ascending");
      } else {
        th.removeAttribute("aria-sort");
      }
    });
  }

  function sortBy(column) {
    if (state.column === column) {
      state.descending = !state.descending;
    } else {
      state.column = column;
      state.descending = columns[column] === "prob_ai";  // most confident first
    }
    render();
  }

  headers.forEach(function (th, column) {
    th.addEventListener("click", function () { sortBy(column); });
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(column); }
    });
  });
  filterInput.addEventListener("input", function () {
    state.text = filterInput.value;
    state.limit = PAGE;
    render();
  });
  verdictSelect.addEventListener("change", function () {
    state.verdict = verdictSelect.value;
    state.limit = PAGE;
    render();
  });
  moreButton.addEventListener("click", function () { state.limit += PAGE; render(); });
  render();
})();

/* Reviewers' decisions: buttons on each flagged image record a decision in the page, and
   "export decisions" saves them as a CSV file for `audit review import` (the offline page cannot
   write to the run store). Nothing leaves the machine: the file is made from a Blob. Cells that a
   spreadsheet would run as a formula get a leading quote, as in results.csv. */
(function () {
  "use strict";
  var exportButton = document.getElementById("export-decisions");
  var reviewer = document.getElementById("reviewer");
  var countText = document.getElementById("decision-count");
  if (!exportButton) { return; }
  var COLUMNS = ["sha256", "path", "model_id", "prob_ai", "review", "review_note", "decided_by", "decided_at"];
  var decisions = {};  // by sha256: the last one clicked for those bytes
  var order = [];

  function itemOf(element) {
    while (element && !element.hasAttribute("data-sha256")) { element = element.parentElement; }
    return element;
  }

  function isoNow() { return new Date().toISOString().replace(/\.\d+Z$/, "Z"); }

  function decide(button) {
    var item = itemOf(button);
    if (!item) { return; }
    var sha256 = item.getAttribute("data-sha256");
    if (!/^[0-9a-f]{64}$/.test(sha256)) { return; }
    var note = item.querySelector(".decision-note");
    if (!(sha256 in decisions)) { order.push(sha256); }
    decisions[sha256] = {
      sha256: sha256, path: item.getAttribute("data-path"), model_id: item.getAttribute("data-model-id"),
      prob_ai: item.getAttribute("data-prob-ai"), review: button.getAttribute("data-decision"),
      review_note: note ? note.value : "", decided_at: isoNow()
    };
    // Copies of one image (the same sha256) share the decision; show it on each.
    Array.prototype.forEach.call(document.querySelectorAll("[data-sha256='" + sha256 + "'] .decide button"), function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-decision") === decisions[sha256].review ? "true" : "false");
    });
    item.classList.add("decided-here");
    countText.textContent = order.length + " decision" + (order.length === 1 ? "" : "s") + " made on this page";
    exportButton.disabled = false;
  }

  function csvCell(value) {
    var text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r']/.test(text)) { text = "'" + text; }
    return '"' + text.replace(/"/g, '""') + '"';
  }

  function exportText() {
    var by = reviewer.value.trim();
    var lines = [COLUMNS.join(",")];
    order.forEach(function (sha256) {
      var d = decisions[sha256];
      d.decided_by = by;
      lines.push(COLUMNS.map(function (name) { return csvCell(d[name]); }).join(","));
    });
    return "\ufeff" + lines.join("\r\n") + "\r\n";
  }

  Array.prototype.forEach.call(document.querySelectorAll(".decide button[data-decision]"), function (button) {
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", function () { decide(button); });
  });
  // A note typed after the click still belongs to that decision.
  Array.prototype.forEach.call(document.querySelectorAll(".decision-note"), function (input) {
    input.addEventListener("input", function () {
      var item = itemOf(input);
      var sha256 = item && item.getAttribute("data-sha256");
      if (sha256 && decisions[sha256]) { decisions[sha256].review_note = input.value; }
    });
  });
  exportButton.addEventListener("click", function () {
    var blob = new Blob([exportText()], { type: "text/csv;charset=utf-8" });
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "decisions-" + (document.body.getAttribute("data-run-id") || "report") + ".csv";
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  });
  window.auditDecisionsCsv = exportText;  // for a reviewer's console, and the tests
})();
