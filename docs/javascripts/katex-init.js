// Render the maths that pymdownx.arithmatex (generic mode) leaves as \( ... \) and \[ ... \] in
// elements of class "arithmatex". Only those delimiters: a stray dollar sign stays text, and any
// formula that failed to render stays visible as raw TeX (the browser check looks for it).
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    ignoredClasses: ["highlight"],
    throwOnError: false,
  });
});
