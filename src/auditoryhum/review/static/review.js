// Keyboard shortcuts, label suggestions and the dataset filter of the review UI. Every page works without this
// script. Label text is untrusted: it is only ever set as a property value, never parsed as HTML.
"use strict";

function typing(element) {
  return element instanceof HTMLInputElement || element instanceof HTMLTextAreaElement ||
    element instanceof HTMLSelectElement || element.isContentEditable;
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) {
    return;
  }
  if (typing(event.target)) {
    if (event.key === "Escape") {
      event.target.blur();
    }
    return;
  }
  if (event.key === " ") {
    const audio = document.querySelector("audio");
    const control = event.target instanceof HTMLButtonElement || event.target instanceof HTMLAnchorElement ||
      event.target instanceof HTMLAudioElement;
    if (audio && !control) {  // a focused control keeps its own space
      event.preventDefault();
      if (audio.paused) {
        audio.play();
      } else {
        audio.pause();
      }
    }
    return;
  }
  const target = Array.from(document.querySelectorAll("[data-key]")).find((el) => el.dataset.key === event.key);
  if (!target) {
    return;
  }
  event.preventDefault();
  if (typing(target)) {
    target.focus();
  } else {
    target.click();
  }
});

// Suggestions for the correction as it is typed: the labels this dataset already uses (GET /api/labels).
const correction = document.getElementById("correction");
const options = document.getElementById("label-options");
if (correction && options) {
  let pending = 0;
  correction.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(async () => {
      const query = new URLSearchParams({dataset: correction.dataset.dataset || "", q: correction.value});
      const response = await fetch(`/api/labels?${query}`, {headers: {Accept: "application/json"}});
      if (!response.ok) {
        return;
      }
      const {labels} = await response.json();
      if (labels.length) {
        options.replaceChildren(...labels.map((label) => {
          const option = document.createElement("option");
          option.value = label;
          return option;
        }));
      }
    }, 150);
  });
}

for (const select of document.querySelectorAll("select[data-autosubmit]")) {
  select.addEventListener("change", () => select.form.submit());
}
