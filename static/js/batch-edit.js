// Batch metadata editing: applies one set of changes to every selected image through
// the bulk API (all change, or none and each image's problem is shown).
(function () {
  "use strict";

  function selectedIds() {
    return Array.from(document.querySelectorAll("[data-asset-select]:checked")).map((box) => box.value);
  }

  function attach(options) {
    const form = document.getElementById("batch-editor");
    if (!form) return;
    const countLabel = form.querySelector("[data-selected-count]");
    const result = form.querySelector(".batch-result");
    const selectAll = document.getElementById("select-all");

    function refresh() {
      const ids = selectedIds();
      countLabel.textContent = ids.length;
      form.hidden = ids.length === 0;
    }
    document.addEventListener("change", (event) => {
      if (event.target.matches("[data-asset-select]")) refresh();
    });
    if (selectAll) {
      selectAll.addEventListener("change", () => {
        document.querySelectorAll("[data-asset-select]:not(:disabled)").forEach((box) => {
          box.checked = selectAll.checked;
        });
        refresh();
      });
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const ids = selectedIds();
      if (!ids.length) return;
      const body = new FormData();
      ids.forEach((id) => body.append("ids", id));
      for (const name of ["title", "description", "tags", "licence"]) {
        const value = form.elements[name].value.trim();
        if (value) body.append(name, value);
      }
      for (const name of ["ai_training_consent", "rights_override_confirmed", "people_identifiable"]) {
        if (form.elements[name].checked) body.append(name, "true");
      }
      for (const name of ["model_release", "property_release"]) {
        const file = form.elements[name].files[0];
        if (file) body.append(name, file);
      }
      result.className = "batch-result";
      result.textContent = "Saving…";
      let response;
      try {
        response = await fetch(form.dataset.bulkUrl, {
          method: "POST",
          body,
          credentials: "same-origin",
          headers: { "X-CSRFToken": options.csrf, Accept: "application/json" },
        });
      } catch (error) {
        result.className = "batch-result error";
        result.textContent = "The network failed; nothing was changed. Try again.";
        return;
      }
      const data = await response.json().catch(() => ({}));
      if (response.ok) {
        result.className = "batch-result ok";
        result.textContent = `Saved for ${data.length} image${data.length === 1 ? "" : "s"}.`;
        document.dispatchEvent(new CustomEvent("assets-updated", { detail: data }));
      } else {
        result.className = "batch-result error";
        const lines = [];
        for (const [key, messages] of Object.entries(data)) {
          (Array.isArray(messages) ? messages : [messages]).forEach((m) => lines.push(typeof m === "string" ? m : JSON.stringify(m)));
        }
        result.textContent = "Nothing was changed. " + (lines.join(" ") || `The server answered ${response.status}.`);
      }
    });
    refresh();
    return { refresh };
  }

  window.BatchEditor = { attach, selectedIds };
})();
