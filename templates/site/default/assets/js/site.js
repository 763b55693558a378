// Marks the current page's link in the header; everything else is plain HTML.
document.addEventListener("DOMContentLoaded", () => {
  for (const link of document.querySelectorAll(".site-header nav a")) {
    if (link.pathname === window.location.pathname) link.setAttribute("aria-current", "page");
  }
});
