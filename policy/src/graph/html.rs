//! The graph as one self-contained, offline HTML page: the SVG drawing, the graph as embedded
//! JSON, and inline CSS and script (`page.css`, `page.js`) for the namespace filter, the search
//! box and the details of a clicked pod (the policies selecting it, and the rules admitting each
//! of its edges). Opened with `#selftest`, the page checks itself (for the headless browser test).

use super::svg::{escape, to_svg};
use super::Graph;

const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// Records script errors before anything else runs, for the page and its self-test to show.
const ERROR_CATCHER: &str = r#"window.pageErrors = [];
window.addEventListener("error", function (e) {
  window.pageErrors.push(String(e.message));
  var out = document.getElementById("errors");
  if (out) out.textContent = window.pageErrors.join("\n");
});"#;

pub fn to_html(graph: &Graph, title: &str) -> Result<String, serde_json::Error> {
    // `<` never occurs outside JSON strings, where `\u003c` means the same: the data cannot close
    // its script element.
    let json = serde_json::to_string(graph)?.replace('<', "\\u003c");
    let title = escape(title);
    let svg = to_svg(graph);
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{PAGE_CSS}</style>
<script>{ERROR_CATCHER}</script>
</head>
<body>
<header>
<h1>{title}</h1>
<label>Namespace <select id="ns-filter"><option value="">all</option></select></label>
<label>Search <input id="search" type="search" placeholder="pod or address"></label>
</header>
<main>
<div id="drawing">
{svg}</div>
<aside id="details"><p>Click a pod or block to see the policies selecting it and the rules admitting each of its connections.</p></aside>
</main>
<pre id="errors"></pre>
<div id="selftest"></div>
<script type="application/json" id="graph-data">{json}</script>
<script>{PAGE_JS}</script>
</body>
</html>
"#
    ))
}
