// The story's filters: show or hide anonymous, known and identity entries (the page works without it).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var filters = document.querySelector(".filters");
  if (!filters) return;
  filters.hidden = false;
  filters.addEventListener("change", function () {
    var shown = {};
    filters.querySelectorAll("input[data-filter]").forEach(function (box) { shown[box.dataset.filter] = box.checked; });
    document.querySelectorAll(".story .entry").forEach(function (entry) {
      entry.classList.toggle("hidden-by-filter", !shown[entry.dataset.kind]);
    });
  });
});
