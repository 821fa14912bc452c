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
