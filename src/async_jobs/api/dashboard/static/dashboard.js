// The dashboard's own script (no inline scripts: the Content-Security-Policy forbids them).
// Asks before a form marked data-confirm is sent, keeps the "select all" box of the jobs
// table in step with the rows' boxes, and keeps the live parts (data-stream="<url>") current
// from the server-sent events of that URL: each "update" event is the part's new HTML
// (rendered and escaped by the server), "gone" ends the stream.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var submitter = event.submitter;
    var text = (submitter && submitter.getAttribute("data-confirm")) ||
      form.getAttribute("data-confirm");
    if (text && !window.confirm(text)) {
      event.preventDefault();
    }
  }, true);
  function selecting() {
    return document.querySelector("input[name=ids]:checked") !== null;
  }
  // A live table is not replaced while rows are selected (the selection would be lost):
  // its latest HTML waits until none is.
  var waiting = [];
  function show(part, html) {
    if (part.hasAttribute("data-keeps-selection") && selecting()) {
      part.__pending = html;
      if (waiting.indexOf(part) < 0) { waiting.push(part); }
      return;
    }
    part.__pending = null;
    part.innerHTML = html;
    part.setAttribute("data-updated", String(Date.now()));
  }
  if (window.EventSource) {
    document.querySelectorAll("[data-stream]").forEach(function (part) {
      var source = new EventSource(part.getAttribute("data-stream"));
      source.addEventListener("update", function (event) { show(part, event.data); });
      source.addEventListener("gone", function () { source.close(); });
      window.addEventListener("pagehide", function () { source.close(); });
    });
  }
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.id === "select-all") {
      document.querySelectorAll("input[name=ids]").forEach(function (row) {
        row.checked = box.checked;
      });
    }
    if (!selecting()) {
      waiting.splice(0).forEach(function (part) {
        if (part.__pending) { show(part, part.__pending); }
      });
    }
  });
})();
