// Bulk upload: each file is its own request with its own progress bar; a bounded number
// run in parallel; a failed file can be retried; accepted files are followed until ready.
(function () {
  "use strict";

  const root = document.getElementById("uploader");
  const list = document.getElementById("upload-list");
  const input = document.getElementById("file-input");
  const dropZone = document.getElementById("drop-zone");
  const summary = root.querySelector(".upload-summary");
  const selectAllLabel = root.querySelector(".select-all");
  const csrf = root.dataset.csrf;
  const uploadUrl = root.dataset.uploadUrl;
  const maxBytes = Number(root.dataset.maxBytes);
  const parallel = Number(root.dataset.parallel) || 3;
  const queue = [];
  const items = [];
  let active = 0;
  const editor = window.BatchEditor.attach({ csrf });

  function formatBytes(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
    return Math.max(1, Math.round(n / 1e3)) + " kB";
  }

  function setState(item, state, message, link) {
    item.state = state;
    item.row.dataset.status = state;
    item.message.textContent = message;
    item.message.className = "message " + state;
    if (link) {
      const a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      a.target = "_blank";
      item.message.append(" ", a);
    }
    // A refused file would be refused again; only transport and server failures are worth retrying.
    item.retry.hidden = state !== "failed";
    item.select.disabled = !item.assetId;
    updateSummary();
  }

  function setProgress(item, fraction) {
    const percent = Math.round(fraction * 100);
    item.progress.value = percent;
    item.percent.textContent = percent + " %";
  }

  function updateSummary() {
    const count = (states) => items.filter((i) => states.includes(i.state)).length;
    summary.textContent =
      `${items.length} file(s): ${count(["processing", "ready"])} accepted (${count(["ready"])} ready), ` +
      `${count(["rejected"])} refused, ${count(["failed"])} failed, ${count(["queued", "uploading"])} uploading.`;
    selectAllLabel.hidden = !items.some((i) => i.assetId);
  }

  function addRow(file) {
    const row = document.createElement("li");
    row.className = "upload-item";
    row.innerHTML =
      '<label class="pick"><input type="checkbox" data-asset-select disabled></label>' +
      '<span class="name"></span><span class="size muted"></span>' +
      '<progress max="100" value="0"></progress><span class="percent">0 %</span>' +
      '<span class="message"></span><button type="button" class="retry secondary" hidden>Retry</button>';
    row.querySelector(".name").textContent = file.name;
    row.querySelector(".size").textContent = formatBytes(file.size);
    list.append(row);
    const item = {
      file,
      row,
      progress: row.querySelector("progress"),
      percent: row.querySelector(".percent"),
      message: row.querySelector(".message"),
      retry: row.querySelector(".retry"),
      select: row.querySelector("[data-asset-select]"),
      assetId: null,
      state: "queued",
    };
    item.retry.addEventListener("click", () => enqueue(item));
    items.push(item);
    return item;
  }

  function enqueue(item) {
    setProgress(item, 0);
    setState(item, "queued", "Waiting…");
    queue.push(item);
    pump();
  }

  function pump() {
    while (active < parallel && queue.length) {
      send(queue.shift());
    }
  }

  function send(item) {
    active += 1;
    setState(item, "uploading", "Uploading…");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", uploadUrl);
    xhr.setRequestHeader("X-CSRFToken", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) setProgress(item, event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      const data = xhr.response || {};
      if (xhr.status === 201) {
        setProgress(item, 1);
        item.assetId = data.id;
        item.select.value = data.id;
        item.select.disabled = false;
        item.select.checked = true;
        setState(item, "processing", "Accepted · processing…", { href: data.page_url, text: "view" });
        editor && editor.refresh();
        follow(item);
      } else if (xhr.status === 409) {
        setState(item, "rejected", data.detail || "Already uploaded.", { href: data.existing.page_url, text: "see the existing one" });
      } else if (xhr.status >= 400 && xhr.status < 500) {
        const reason = data.detail || (data.file && data.file[0]) || `Rejected (${xhr.status}).`;
        setState(item, "rejected", "Rejected: " + reason);
      } else {
        setState(item, "failed", `The server failed (${xhr.status}). Retry this file.`);
      }
    });
    xhr.addEventListener("error", () => setState(item, "failed", "The network failed. Retry this file."));
    xhr.addEventListener("abort", () => setState(item, "failed", "The upload was stopped. Retry this file."));
    xhr.addEventListener("loadend", () => {
      active -= 1;
      pump();
    });
    const body = new FormData();
    body.append("file", item.file, item.file.name);
    xhr.send(body);
  }

  // Poll an accepted file until its processing ends.
  async function follow(item) {
    for (let attempt = 0; attempt < 600; attempt += 1) {
      try {
        const response = await fetch(`${uploadUrl}${item.assetId}/`, {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
        if (response.ok) {
          const asset = await response.json();
          if (asset.status === "ready") {
            setState(item, "ready", "Ready", { href: asset.page_url, text: "view" });
            return;
          }
          if (asset.status === "failed") {
            // Not an upload failure: the file is stored; its page offers "Retry processing".
            setState(item, "rejected", "Processing failed: " + asset.failure_reason, { href: asset.page_url, text: "details" });
            return;
          }
        }
      } catch (error) {
        /* transient: keep polling */
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 700 + attempt * 200)));
    }
  }

  function addFiles(files) {
    for (const file of files) {
      const item = addRow(file);
      if (file.size > maxBytes) {
        setState(item, "rejected", `Rejected: the file is ${formatBytes(file.size)}; the limit is ${formatBytes(maxBytes)}.`);
        continue;
      }
      enqueue(item);
    }
  }

  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  ["dragenter", "dragover"].forEach((type) =>
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add("over");
    })
  );
  ["dragleave", "drop"].forEach((type) =>
    dropZone.addEventListener(type, () => dropZone.classList.remove("over"))
  );
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });
  dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
})();
