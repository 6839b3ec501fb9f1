// Copy and reveal buttons: [data-copy="text"] copies, [data-reveal="input-id"] toggles.
document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    navigator.clipboard.writeText(copy.dataset.copy).then(() => {
      const label = copy.textContent;
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = label; }, 1500);
    });
  }
  const reveal = event.target.closest("[data-reveal]");
  if (reveal) {
    const input = document.getElementById(reveal.dataset.reveal);
    const hidden = input.type === "password";
    input.type = hidden ? "text" : "password";
    reveal.textContent = hidden ? "Hide" : "Show";
  }
});

// Bar widths come as [data-width="percent"]: the Content Security Policy allows no inline
// style attributes, but a style set from a script file is fine.
function applyWidths(root) {
  root.querySelectorAll("[data-width]").forEach((el) => {
    el.style.width = `${Number(el.dataset.width) || 0}%`;
  });
}
document.addEventListener("DOMContentLoaded", () => applyWidths(document));
document.addEventListener("htmx:load", (event) => applyWidths(event.detail.elt));
// Phones: the Menu button folds the navigation and user menu in and out.
document.addEventListener("click", (event) => {
  const toggle = event.target.closest(".menu-toggle");
  if (!toggle) return;
  const open = toggle.closest(".topbar").classList.toggle("open");
  toggle.setAttribute("aria-expanded", String(open));
});

// The launch wizard: the summary follows the chosen size (the server wrote each card's).
document.addEventListener("change", (event) => {
  const summary = document.getElementById("launch-summary");
  if (summary && event.target.matches("input[name=profile][data-summary]")) {
    summary.textContent = event.target.dataset.summary;
  }
});

// The launch wizard's refusals come back as 400 with the reasons (#launch-feedback): htmx
// swaps only 2xx answers unless told, and the reasons are what the user must see.
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.xhr.status === 400 && event.detail.target.id === "launch-feedback") {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});
document.addEventListener("htmx:afterSwap", (event) => {
  const feedback = document.querySelector("#launch-feedback .form-error");
  if (feedback && event.detail.target.id === "launch-feedback") {
    feedback.focus();
    feedback.scrollIntoView({ block: "center" });
  }
});
