// The behaviour of `portcullis graph --output html`: the namespace filter, the search box, the
// details of a clicked node, and the self-test run when the page is opened with `#selftest`.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("graph-data").textContent);
  const pods = new Map();
  for (const ns of data.namespaces) for (const pod of ns.pods) pods.set(pod.id, pod);
  const blocks = new Map(data.blocks.map((b) => [b.id, b]));
  const nodes = Array.from(document.querySelectorAll("#graph .node"));
  const lines = Array.from(document.querySelectorAll("#graph .edge, #graph .probe"));
  const filter = document.getElementById("ns-filter");
  const search = document.getElementById("search");
  const details = document.getElementById("details");

  const namespaceOf = (id) => (pods.has(id) ? pods.get(id).namespace : "");
  const labelOf = (id) => (pods.has(id) ? id.slice(4) : blocks.has(id) ? blocks.get(id).label : id);

  for (const ns of data.namespaces) {
    const option = document.createElement("option");
    option.value = ns.name;
    option.textContent = ns.name + (ns.default_deny ? "" : " (no default deny)");
    filter.appendChild(option);
  }

  // A namespace keeps its nodes, the lines touching them and the nodes at their other ends; the
  // search marks nodes whose name matches and dims the rest.
  function apply() {
    const ns = filter.value;
    const query = search.value.trim().toLowerCase();
    const touching = (line) =>
      ns === "" || namespaceOf(line.dataset.from) === ns || namespaceOf(line.dataset.to) === ns;
    const neighbours = new Set();
    for (const line of lines) {
      const shown = touching(line);
      line.classList.toggle("hidden", !shown);
      if (shown) { neighbours.add(line.dataset.from); neighbours.add(line.dataset.to); }
    }
    for (const node of nodes) {
      const id = node.dataset.id;
      const inFilter = ns === "" || node.dataset.ns === ns || neighbours.has(id);
      const matches = query === "" || labelOf(id).toLowerCase().includes(query);
      node.classList.toggle("dim", !inFilter || !matches);
      node.classList.toggle("match", query !== "" && matches && inFilter);
    }
    for (const box of document.querySelectorAll("#graph .namespace > rect")) {
      const name = box.parentNode.dataset.ns;
      box.classList.toggle("dim", ns !== "" && name !== ns);
    }
  }

  function element(tag, text, className) {
    const el = document.createElement(tag);
    if (text !== undefined) el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  function edgeItem(edge, id) {
    const other = edge.from === id ? "to " + labelOf(edge.to) : "from " + labelOf(edge.from);
    const item = element("li", other + ": " + edge.ports);
    const rules = element("ul");
    for (const a of edge.admitted_by) {
      rules.appendChild(element("li", a.policy + " " + a.direction + "[" + a.rule + "]: " + a.ports, "rule"));
    }
    if (edge.admitted_by.length === 0) {
      rules.appendChild(element("li", "no policy restricts this connection", "rule mark"));
    }
    item.appendChild(rules);
    return item;
  }

  function show(id) {
    for (const node of nodes) node.classList.toggle("selected", node.dataset.id === id);
    for (const line of lines) {
      line.classList.toggle("hl", line.dataset.from === id || line.dataset.to === id);
    }
    details.replaceChildren(element("h2", labelOf(id)));
    const pod = pods.get(id);
    if (pod) {
      details.appendChild(element("h3", "Policies selecting it"));
      const list = element("ul", undefined, "policies");
      for (const s of pod.policies) list.appendChild(element("li", s.policy + " (" + s.direction + ")"));
      if (pod.policies.length === 0) list.appendChild(element("li", "selected by no policy: all traffic allowed", "mark"));
      details.appendChild(list);
    }
    for (const [title, edges] of [
      ["Outgoing", data.edges.filter((e) => e.from === id)],
      ["Incoming", data.edges.filter((e) => e.to === id)],
    ]) {
      details.appendChild(element("h3", title + " (" + edges.length + ")"));
      const list = element("ul");
      for (const edge of edges) list.appendChild(edgeItem(edge, id));
      details.appendChild(list);
    }
    const probes = data.probes.filter((p) => p.from === id || p.to === id);
    if (probes.length > 0) {
      details.appendChild(element("h3", "Probes"));
      const list = element("ul");
      for (const p of probes) {
        list.appendChild(element("li", labelOf(p.from) + " → " + labelOf(p.to) + " " + p.port + ": " +
          (p.allowed ? "allow" : "DENY") + " — " + p.reason));
      }
      details.appendChild(list);
    }
  }

  for (const node of nodes) node.addEventListener("click", () => show(node.dataset.id));
  filter.addEventListener("change", apply);
  search.addEventListener("input", apply);
  apply();

  // Clicks the first pod a policy selects (else the first pod) and checks that the panel names
  // every policy selecting it; the outcome goes to #selftest and the title for a headless browser.
  function selftest() {
    const all = Array.from(pods.values());
    const target = all.find((p) => p.policies.length > 0) || all[0];
    const drawn = document.querySelectorAll("#graph .node.pod").length;
    const problems = [];
    if (drawn !== all.length) problems.push("drew " + drawn + " pods of " + all.length);
    if (target) {
      const node = nodes.find((n) => n.dataset.id === target.id);
      node.dispatchEvent(new MouseEvent("click", { bubbles: true }));
      const listed = Array.from(details.querySelectorAll(".policies li")).map((li) => li.textContent);
      for (const s of target.policies) {
        if (!listed.some((text) => text.startsWith(s.policy + " "))) problems.push("panel lacks " + s.policy);
      }
    }
    if (window.pageErrors.length > 0) problems.push("errors: " + window.pageErrors.join("; "));
    const verdict = problems.length === 0
      ? "selftest: pass (" + drawn + " pods drawn; clicked " + (target ? target.id : "nothing") + ")"
      : "selftest: fail: " + problems.join("; ");
    document.getElementById("selftest").textContent = verdict;
    document.title = verdict;
  }
  if (window.location.hash === "#selftest") selftest();
})();
