// The dashboard's own script (no inline scripts: the Content-Security-Policy forbids them).
// Asks before a form marked data-confirm is sent, and keeps the "select all" box of the
// jobs table in step with the rows' boxes.
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
  // A live table is not refreshed while rows are selected: the selection would be lost.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var live = event.detail.elt;
    if (live && live.hasAttribute("data-keeps-selection") &&
        document.querySelector("input[name=ids]:checked")) {
      event.preventDefault();
    }
  });
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.id === "select-all") {
      document.querySelectorAll("input[name=ids]").forEach(function (row) {
        row.checked = box.checked;
      });
    }
  });
})();
