/* headatlas interactive atlas. Builds the page from the JSON block #atlas-data.
   Data strings reach the DOM only through textContent and element properties, never as markup. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("atlas-data").textContent);
  var TICK_STEPS = [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500];
  var TOP_IN_TOOLTIP = 5;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function clamp(x, lo, hi) { return Math.max(lo, Math.min(hi, x)); }
  function fmt(v) { return v < 0 ? "\u2013" : (v / 1000).toFixed(3); }
  /* Validation numbers arrive as plain floats or null. */
  function num(v) { return v === null || v === undefined ? "\u2013" : Number(v).toFixed(3); }
  function pval(p) { return p === null || p === undefined ? "\u2013" : p < 0.001 ? "<0.001" : p.toFixed(3); }
  function count(v) { return v === null || v === undefined ? "\u2013" : String(v); }
  var CORRELATION_ROWS = [
    ["correlative", "relation", "relation score"],
    ["correlative", "suppression", "suppression score"],
    ["multi_token", "relation", "multi-token, relation"],
    ["multi_token", "suppression", "multi-token, suppr."]
  ];

  /* 1001-entry lookup table of the 0..1 score colour scale (thousandths -> css colour). */
  var SCALE = (function (stops) {
    var rgb = stops.map(function (h) {
      return [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)];
    });
    var out = new Array(1001);
    for (var v = 0; v <= 1000; v++) {
      var t = (v / 1000) * (rgb.length - 1), i = Math.min(Math.floor(t), rgb.length - 2), f = t - i;
      var c = [0, 1, 2].map(function (k) { return Math.round(rgb[i][k] + (rgb[i + 1][k] - rgb[i][k]) * f); });
      out[v] = "rgb(" + c[0] + ", " + c[1] + ", " + c[2] + ")";
    }
    return out;
  })(DATA.score_scale);
  var MISSING = "#ffffff";

  function tickStep(n, px, spacing) {
    var maxTicks = Math.max(2, Math.floor(px / spacing));
    for (var i = 0; i < TICK_STEPS.length; i++) if (n / TICK_STEPS[i] <= maxTicks) return TICK_STEPS[i];
    return Math.ceil(n / maxTicks);
  }

  var tooltip = el("div");
  tooltip.id = "tooltip";
  tooltip.setAttribute("role", "tooltip");

  function Model(m, index) {
    this.m = m;
    this.index = index;
    this.nCells = m.n_layers * m.n_heads;
    this.mode = -1; /* -1: colour by label; r >= 0: by relation r */
    this.supp = false;
    this.labelOn = m.labels.map(function () { return true; });
    this.implCat = -1;
    this.pinned = -1;
    this.cells = new Array(this.nCells);
    this.root = el("section", "model");
    this.root.id = "model-" + index;
    this.build();
  }

  Model.prototype.headName = function (i) {
    var H = this.m.n_heads;
    return "L" + Math.floor(i / H) + " H" + (i % H);
  };

  Model.prototype.headKey = function (i) {
    var H = this.m.n_heads;
    return "L" + Math.floor(i / H) + "H" + (i % H);
  };

  /* "L12H2", "l12 h2", "12.2", "L12/H2" -> head index, or -1. */
  Model.prototype.parseHead = function (text) {
    var match = /^\s*L?\s*(\d+)\s*[H.:\/ ,]\s*(\d+)\s*$/i.exec(text);
    if (!match) match = /^\s*L(\d+)H(\d+)\s*$/i.exec(text);
    if (!match) return -1;
    var l = parseInt(match[1], 10), h = parseInt(match[2], 10);
    return l < this.m.n_layers && h < this.m.n_heads ? l * this.m.n_heads + h : -1;
  };

  Model.prototype.build = function () {
    var m = this.m, self = this;
    var classified = 0, counts = m.labels.map(function () { return 0; });
    for (var i = 0; i < this.nCells; i++) {
      var lab = m.label[i];
      if (lab >= 0) { counts[lab]++; if (m.labels[lab] !== "Unclassified") classified++; }
    }
    var meta = m.name + " \u00b7 " + m.n_layers + " layers \u00d7 " + m.n_heads + " heads \u00b7 " +
      classified + " classified heads \u00b7 " + m.relations.length + " relations";
    if (m.skipped.length) meta += " \u00b7 skipped: " + m.skipped.map(function (s) { return s[0] + " (" + s[1] + ")"; }).join(", ");
    if (m.class_level && m.class_level.length) meta += " \u00b7 class-level (shuffled targets score alike): " + m.class_level.join(", ");
    this.root.appendChild(el("p", "meta", meta));

    /* Controls: colour by, suppression toggle, implements-category filter. */
    var controls = el("div", "controls");
    var colourLabel = el("label", null, "Colour by ");
    var select = el("select", "colour-by");
    select.appendChild(new Option("Category label", "-1"));
    var groups = {};
    m.relations.forEach(function (name, r) {
      var cat = m.relation_categories[r] || "Other";
      if (!groups[cat]) { groups[cat] = el("optgroup"); groups[cat].label = cat; select.appendChild(groups[cat]); }
      groups[cat].appendChild(new Option(name, String(r)));
    });
    select.addEventListener("change", function () { self.mode = parseInt(select.value, 10); self.recolour(); });
    this.select = select;
    colourLabel.appendChild(select);
    controls.appendChild(colourLabel);

    var suppLabel = el("label");
    var supp = el("input", "supp-toggle");
    supp.type = "checkbox";
    supp.addEventListener("change", function () { self.supp = supp.checked; self.recolour(); });
    suppLabel.appendChild(supp);
    suppLabel.appendChild(document.createTextNode("suppression score"));
    controls.appendChild(suppLabel);

    var implLabel = el("label", null, "Implements ");
    var impl = el("select", "impl-filter");
    impl.appendChild(new Option("any category", "-1"));
    m.categories.forEach(function (c, k) { impl.appendChild(new Option(c, String(k))); });
    impl.addEventListener("change", function () { self.implCat = parseInt(impl.value, 10); self.refilter(); });
    implLabel.appendChild(impl);
    controls.appendChild(implLabel);
    this.shown = el("span", "shown");
    controls.appendChild(this.shown);
    var searchLabel = el("label", null, "Find ");
    var search = el("input", "search");
    search.type = "search";
    search.placeholder = "head (L12H2), relation or token";
    search.setAttribute("aria-label", "Find a head, relation or token");
    search.addEventListener("input", function () { self.showSearch(search.value); });
    search.addEventListener("keydown", function (e) {
      if (e.key !== "Enter") return;
      var first = self.results.querySelector("button");
      if (first) first.click();
    });
    searchLabel.appendChild(search);
    controls.appendChild(searchLabel);
    this.search = search;
    this.root.appendChild(controls);
    this.results = el("ul", "search-results");
    this.root.appendChild(this.results);

    /* Label legend doubling as the label filter. */
    var legend = el("div", "legend");
    legend.setAttribute("aria-label", "Head labels (uncheck to dim)");
    m.labels.forEach(function (name, k) {
      var item = el("label");
      var box = el("input", "label-filter");
      box.type = "checkbox";
      box.checked = true;
      box.value = name;
      box.addEventListener("change", function () { self.labelOn[k] = box.checked; self.refilter(); });
      var sw = el("span", "swatch");
      sw.style.backgroundColor = m.label_colors[k];
      item.appendChild(box);
      item.appendChild(sw);
      item.appendChild(document.createTextNode(name));
      item.appendChild(el("span", "count", "(" + counts[k] + ")"));
      legend.appendChild(item);
    });
    this.root.appendChild(legend);

    this.scale = el("div", "scale");
    this.scaleTitle = el("span");
    var bar = el("span", "bar");
    bar.style.background = "linear-gradient(to right, " + DATA.score_scale.join(", ") + ")";
    this.scale.appendChild(this.scaleTitle);
    this.scale.appendChild(el("span", null, "0"));
    this.scale.appendChild(bar);
    this.scale.appendChild(el("span", null, "1"));
    this.root.appendChild(this.scale);
    if (m.validation) {
      /* The chosen relation's validation, shown while the grid is coloured by a relation. */
      this.vpanel = el("div", "validation-panel");
      this.root.appendChild(this.vpanel);
    }

    /* The grid: layers along x, heads along y with head 0 at the bottom. */
    var body = el("div", "body");
    var plot = el("div", "plot");
    var L = m.n_layers, H = m.n_heads;
    var cw = clamp(Math.floor(960 / L) - 1, 5, 48), ch = clamp(Math.floor(600 / H) - 1, 5, 40);
    var yticks = el("div", "yticks");
    var wrap = el("div", "grid-wrap");
    var grid = el("div", "grid");
    grid.style.gridTemplateColumns = "repeat(" + L + ", " + cw + "px)";
    grid.style.setProperty("--cw", cw + "px");
    grid.style.setProperty("--ch", ch + "px");
    var frag = document.createDocumentFragment();
    for (var row = 0; row < H; row++) {
      var head = H - 1 - row;
      for (var layer = 0; layer < L; layer++) {
        var idx = layer * H + head;
        var cell = document.createElement("div");
        cell.className = "cell";
        cell.dataset.i = String(idx);
        this.cells[idx] = cell;
        frag.appendChild(cell);
      }
    }
    grid.appendChild(frag);
    this.grid = grid;
    wrap.appendChild(grid);
    var gridH = H * (ch + 1) + 1, gridW = L * (cw + 1) + 1;
    yticks.style.height = gridH + "px";
    var ys = tickStep(H, gridH, 22);
    for (var h = 0; h < H; h += ys) {
      var t = el("span", null, h);
      t.style.top = (1 + (H - 1 - h) * (ch + 1) + ch / 2) + "px";
      yticks.appendChild(t);
    }
    var xticks = el("div", "xticks");
    xticks.style.width = gridW + "px";
    var xs = tickStep(L, gridW, 36);
    for (var l = 0; l < L; l += xs) {
      var tx = el("span", null, l);
      tx.style.left = (1 + l * (cw + 1) + cw / 2) + "px";
      xticks.appendChild(tx);
    }
    var ylab = el("div", "ylab", "Head");
    var yside = el("div");
    yside.style.display = "flex";
    yside.appendChild(ylab);
    yside.appendChild(yticks);
    plot.appendChild(yside);
    plot.appendChild(wrap);
    plot.appendChild(el("div"));
    var xbox = el("div");
    xbox.appendChild(xticks);
    xbox.appendChild(el("div", "xlab", "Layer"));
    plot.appendChild(xbox);
    body.appendChild(plot);

    this.side = el("aside", "side");
    this.side.setAttribute("aria-live", "polite");
    body.appendChild(this.side);
    this.root.appendChild(body);
    if (m.validation) this.root.appendChild(this.validationSection());

    grid.addEventListener("mousemove", function (e) {
      var i = self.cellIndex(e.target);
      if (i < 0) { tooltip.classList.remove("on"); return; }
      if (tooltip.dataset.model !== String(self.index) || tooltip.dataset.i !== String(i)) self.fillTooltip(i);
      self.placeTooltip(e.clientX, e.clientY);
    });
    grid.addEventListener("mouseleave", function () { tooltip.classList.remove("on"); tooltip.dataset.i = ""; });
    grid.addEventListener("click", function (e) {
      var i = self.cellIndex(e.target);
      if (i >= 0) self.pin(i === self.pinned ? -1 : i);
    });

    this.recolour();
    this.refilter();
    this.showSide();
  };

  Model.prototype.cellIndex = function (target) {
    if (!target || !target.classList || !target.classList.contains("cell")) return -1;
    return parseInt(target.dataset.i, 10);
  };

  Model.prototype.recolour = function () {
    var m = this.m, cells = this.cells, i;
    if (this.mode < 0) {
      for (i = 0; i < this.nCells; i++) {
        var lab = m.label[i];
        cells[i].style.backgroundColor = lab >= 0 ? m.label_colors[lab] : MISSING;
      }
      this.scale.classList.remove("on");
      this.grid.classList.remove("scored");
    } else {
      var values = (this.supp ? m.supp : m.score)[this.mode];
      for (i = 0; i < this.nCells; i++) {
        var v = values[i];
        cells[i].style.backgroundColor = v < 0 ? MISSING : SCALE[clamp(v, 0, 1000)];
      }
      this.scale.classList.add("on");
      this.grid.classList.add("scored");
      this.scaleTitle.textContent = (this.supp ? "Suppression score" : "Relation score") + " on " + m.relations[this.mode] + ":";
    }
    this.showValidation();
  };

  Model.prototype.correlationTable = function (entry) {
    var table = el("table", "scores vtable"), head = el("tr"), tbody = el("tbody"), any = false;
    ["static vs dynamic", "r, no context", "p", "r, in context", "p", "prompts"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    CORRELATION_ROWS.forEach(function (spec) {
      var c = entry[spec[0]] && entry[spec[0]][spec[1]];
      if (!c) return;
      any = true;
      var tr = el("tr", spec[0] + "-" + spec[1]);
      tr.appendChild(el("td", null, spec[2]));
      tr.appendChild(el("td", "num r-without", num(c.r_without_context)));
      tr.appendChild(el("td", "num p-without", pval(c.p_without_context)));
      tr.appendChild(el("td", "num r-with", num(c.r_with_context)));
      tr.appendChild(el("td", "num p-with", pval(c.p_with_context)));
      tr.appendChild(el("td", "num n-prompts", count(c.n_prompts)));
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    return any ? table : null;
  };

  Model.prototype.causalLines = function (c) {
    var box = el("div", "causal");
    if (c.skipped) { box.appendChild(el("p", "muted", "Ablation: skipped (" + c.skipped + ")")); return box; }
    var m = count(c.m);
    box.appendChild(el("p", "causal-relation", "Ablating " + m + " relation heads: accuracy " +
      num(c.base_accuracy) + " \u2192 " + num(c.accuracy_relation_heads) + " (" + count(c.n_prompts) + " prompts)"));
    box.appendChild(el("p", "causal-random", "Ablating " + m + " random heads: accuracy " +
      num(c.base_accuracy) + " \u2192 " + num(c.accuracy_random_mean) + " \u00b1 " + num(c.accuracy_random_sd)));
    if (c.controls) {
      box.appendChild(el("p", "causal-control", "Controls (" + c.controls.split(";").join(", ") + "): accuracy " +
        num(c.control_base_accuracy) + " \u2192 " + num(c.control_accuracy_after)));
    } else {
      box.appendChild(el("p", "muted causal-control", "No control relation."));
    }
    return box;
  };

  Model.prototype.showValidation = function () {
    var panel = this.vpanel;
    if (!panel) return;
    panel.replaceChildren();
    panel.classList.toggle("on", this.mode >= 0);
    if (this.mode < 0) return;
    var name = this.m.relations[this.mode], vr = this.m.validation.relations;
    var entry = Object.prototype.hasOwnProperty.call(vr, name) ? vr[name] : null; /* not "constructor" & co. */
    panel.appendChild(el("div", "vtitle", "Validation against inference: " + name));
    if (!entry) { panel.appendChild(el("p", "muted", "This relation was not validated.")); return; }
    var table = this.correlationTable(entry);
    if (table) panel.appendChild(table);
    if (entry.causal) panel.appendChild(this.causalLines(entry.causal));
    if (!table && !entry.causal) panel.appendChild(el("p", "muted", "No results for this relation."));
  };

  Model.prototype.validationSection = function () {
    var self = this, m = this.m, v = m.validation;
    var details = el("details", "validation");
    var names = m.relations.filter(function (r) { return Object.prototype.hasOwnProperty.call(v.relations, r); });
    Object.keys(v.relations).sort().forEach(function (r) { if (names.indexOf(r) < 0) names.push(r); });
    details.appendChild(el("summary", null, "Validation against inference (" + names.length + " relations" +
      (v.experiments.length ? ": " + v.experiments.join(", ") : "") + ")"));
    details.appendChild(el("p", "muted", "r: Pearson correlation of static and dynamic relation scores over heads " +
      "(no context: the head reads the source token only). Drops: accuracy lost when the relation's top heads, " +
      "as many random heads, or its heads on control relations are ablated. Click a row to colour the grid by it."));
    var table = el("table", "scores vsummary"), head = el("tr"), tbody = el("tbody");
    ["relation", "category", "r, no context", "r, in context", "base accuracy", "drop: relation heads", "drop: random", "drop: controls"]
      .forEach(function (h) { head.appendChild(el("th", null, h)); });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    names.forEach(function (name) {
      var e = v.relations[name], c = (e.correlative && e.correlative.relation) || {}, a = e.causal || {};
      var tr = el("tr");
      tr.dataset.relation = name;
      tr.appendChild(el("td", "rel", name));
      tr.appendChild(el("td", "muted", e.category));
      tr.appendChild(el("td", "num r-without", num(c.r_without_context)));
      tr.appendChild(el("td", "num r-with", num(c.r_with_context)));
      tr.appendChild(el("td", "num base", a.skipped ? "skipped" : num(a.base_accuracy)));
      tr.appendChild(el("td", "num drop-relation", num(a.drop_relation_heads)));
      tr.appendChild(el("td", "num drop-random", num(a.drop_random_mean)));
      tr.appendChild(el("td", "num drop-control", num(a.control_drop_mean)));
      var r = m.relations.indexOf(name);
      if (r >= 0) {
        tr.classList.add("pick");
        tr.addEventListener("click", function () { self.select.value = String(r); self.mode = r; self.recolour(); });
      }
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    details.appendChild(table);
    if (v.skipped.length) {
      details.appendChild(el("p", "muted", "Skipped: " + v.skipped.map(function (s) { return s[0] + " (" + s[1] + ")"; }).join("; ")));
    }
    return details;
  };

  Model.prototype.refilter = function () {
    var m = this.m, bit = this.implCat >= 0 ? 1 << this.implCat : 0, shown = 0;
    for (var i = 0; i < this.nCells; i++) {
      var lab = m.label[i];
      var on = (lab < 0 || this.labelOn[lab]) && (!bit || (m.cats[i] & bit) !== 0);
      if (on) shown++;
      this.cells[i].classList.toggle("dim", !on);
    }
    this.shown.textContent = shown + " of " + this.nCells + " heads shown";
  };

  Model.prototype.rankedRelations = function (i) {
    var m = this.m, rows = [];
    for (var r = 0; r < m.relations.length; r++) rows.push([r, m.score[r][i], m.supp[r][i]]);
    rows.sort(function (a, b) { return b[1] - a[1] || b[2] - a[2] || a[0] - b[0]; });
    return rows;
  };

  Model.prototype.labelLine = function (i) {
    var m = this.m, lab = m.label[i], line = el("div", "label-line");
    var sw = el("span", "swatch");
    sw.style.backgroundColor = lab >= 0 ? m.label_colors[lab] : MISSING;
    line.appendChild(sw);
    line.appendChild(el("span", "label-text", lab >= 0 ? m.labels[lab] : "not mapped"));
    var cats = m.categories.filter(function (c, k) { return (m.cats[i] & (1 << k)) !== 0; });
    if (cats.length) line.appendChild(el("span", "muted", "(" + cats.join(", ") + ")"));
    return line;
  };

  Model.prototype.scoreTable = function (rows, full, i) {
    /* full: the pinned panel's table (category, null, p and dynamic scores when present) */
    var m = this.m, table = el("table", "scores"), head = el("tr");
    var nul = full && m.null, dyn = full && m.dynamic;
    var cols = ["relation"].concat(full ? ["category"] : [], ["score", "suppr."]);
    if (nul) cols = cols.concat(["null max", "p"]);
    if (dyn) cols = cols.concat(["dyn.", "dyn. ctx"]);
    cols.forEach(function (h) { head.appendChild(el("th", null, h)); });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var tbody = el("tbody");
    rows.forEach(function (row) {
      var r = row[0];
      /* m.threshold (thousandths): the map's own --threshold, at which a head implements a relation */
      var tr = el("tr", row[1] >= m.threshold ? "hit" : null);
      var name = el("td", "rel", m.relations[r]);
      if (m.class_level.indexOf(m.relations[r]) >= 0) { tr.classList.add("class-level"); name.title = "class-level relation"; }
      tr.appendChild(name);
      if (full) tr.appendChild(el("td", "muted", m.relation_categories[r]));
      tr.appendChild(el("td", "num score", fmt(row[1])));
      tr.appendChild(el("td", "num supp", fmt(row[2])));
      if (nul) {
        var nmax = el("td", "num null-max", fmt(nul.max[r][i]));
        var z = nul.z[r][i];
        nmax.title = "null mean " + fmt(nul.mean[r][i]) + ", z " + (z === null ? "\u2013" : (z / 100).toFixed(2));
        tr.appendChild(nmax);
        var p = nul.p[r][i];
        tr.appendChild(el("td", "num p-value", p < 0 ? "\u2013" : pval(p / 10000)));
      }
      if (dyn) {
        var k = dyn.relations.indexOf(r);
        tr.appendChild(el("td", "num dyn-without", k < 0 ? "\u2013" : fmt(dyn.without[k][i])));
        tr.appendChild(el("td", "num dyn-with", k < 0 ? "\u2013" : fmt(dyn["with"][k][i])));
      }
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    return table;
  };

  Model.prototype.fillTooltip = function (i) {
    tooltip.replaceChildren();
    tooltip.dataset.model = String(this.index);
    tooltip.dataset.i = String(i);
    tooltip.appendChild(el("div", "head-title", this.headName(i)));
    tooltip.appendChild(this.labelLine(i));
    if (this.m.words[i]) tooltip.appendChild(el("p", "words", this.m.words[i]));
    if (this.m.relations.length) {
      tooltip.appendChild(this.scoreTable(this.rankedRelations(i).slice(0, TOP_IN_TOOLTIP), false, i));
      if (this.m.relations.length > TOP_IN_TOOLTIP) tooltip.appendChild(el("div", "muted", "click to pin all " + this.m.relations.length + " relations"));
    }
    tooltip.classList.add("on");
  };

  Model.prototype.placeTooltip = function (x, y) {
    var w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    var left = x + 16, top = y + 16;
    if (left + w > window.innerWidth - 4) left = Math.max(4, x - w - 16);
    if (top + h > window.innerHeight - 4) top = Math.max(4, y - h - 16);
    tooltip.style.left = left + "px";
    tooltip.style.top = top + "px";
  };

  Model.prototype.pin = function (i, keepHash) {
    if (this.pinned >= 0) this.cells[this.pinned].classList.remove("pinned");
    this.pinned = i;
    if (i >= 0) this.cells[i].classList.add("pinned");
    this.showSide();
    if (!keepHash) setHash(this.m.name + (i >= 0 ? "/" + this.headKey(i) : ""));
  };

  /* Arrow keys: left/right a layer, up/down a head (head 0 is at the bottom). */
  Model.prototype.step = function (key) {
    var H = this.m.n_heads, L = this.m.n_layers, i = this.pinned;
    if (i < 0) { this.pin(0); return; }
    var l = Math.floor(i / H), h = i % H;
    if (key === "ArrowLeft") l = Math.max(0, l - 1);
    else if (key === "ArrowRight") l = Math.min(L - 1, l + 1);
    else if (key === "ArrowUp") h = Math.min(H - 1, h + 1);
    else if (key === "ArrowDown") h = Math.max(0, h - 1);
    this.pin(l * H + h);
  };

  /* A clickable head name: pins that head. */
  Model.prototype.headLink = function (i, text) {
    var self = this, b = el("button", "head-link", text || this.headName(i));
    b.type = "button";
    b.dataset.i = String(i);
    b.addEventListener("click", function () { self.pin(i); });
    return b;
  };

  Model.prototype.evidenceList = function (i) {
    var m = this.m, pairs = m.evidence[String(i)];
    if (!pairs || !pairs.length) return null;
    /* groups per (relation, kind), the head's best score first */
    var groups = [], byKey = {};
    pairs.forEach(function (e) {
      var key = e[0] + ":" + e[1];
      if (!byKey[key]) { byKey[key] = []; groups.push([e[0], e[1], byKey[key]]); }
      byKey[key].push(e);
    });
    var value = function (g) { return (g[1] ? m.supp : m.score)[g[0]][i]; };
    groups.sort(function (a, b) { return value(b) - value(a) || a[1] - b[1] || a[0] - b[0]; });
    var box = el("div", "evidence");
    groups.forEach(function (g) {
      box.appendChild(el("div", "ev-rel", (g[1] ? "suppresses " : "") + m.relations[g[0]] + " (" + fmt(value(g)) + ")"));
      var ul = el("ul", "ops ev-pairs");
      box.appendChild(ul);
      g[2].forEach(function (e) { ul.appendChild(evidenceItem(e)); });
    });
    return box;
  };

  function evidenceItem(e) {
    var li = el("li", e[4] ? "right" : "wrong");
    li.appendChild(el("span", "tok", e[2]));
    li.appendChild(el("span", "muted", "\u2192"));
    e[6].forEach(function (t) { li.appendChild(el("span", "tok", t)); });
    li.appendChild(el("span", "mark", e[4] ? "\u2713" : "\u2717"));
    li.appendChild(el("span", "muted", "target"));
    li.appendChild(el("span", "tok target", e[3]));
    li.appendChild(el("span", "muted rank", "rank " + e[5]));
    return li;
  }

  Model.prototype.showSide = function () {
    var self = this, m = this.m, i = this.pinned, side = this.side;
    side.replaceChildren();
    if (i < 0) {
      side.appendChild(el("p", "hint", "Hover a head for its top relations; click it to pin all its scores here. " +
        "Arrow keys move between heads, Esc unpins."));
      return;
    }
    var unpin = el("button", "unpin", "unpin \u00d7");
    unpin.type = "button";
    unpin.addEventListener("click", function () { self.pin(-1); });
    side.appendChild(unpin);
    side.appendChild(el("div", "head-title", this.headName(i)));
    side.appendChild(this.labelLine(i));
    if (m.words[i]) side.appendChild(el("p", "words", m.words[i]));
    side.appendChild(el("h3", null, "Scores (bold: score \u2265 " + fmt(m.threshold) + ")"));
    side.appendChild(this.scoreTable(this.rankedRelations(i), true, i));
    if (m.class_level.length) {
      side.appendChild(el("p", "muted class-note", "* class-level relation: its null is high (heads that boost its " +
        "targets whatever the source score too)."));
    }
    if (m.null) {
      side.appendChild(el("p", "muted", "null max: the best score under target permutations (hover for mean and z); " +
        "p: empirical p-value against them."));
    }
    if (m.dynamic) {
      side.appendChild(el("p", "muted", "dyn.: dynamic score at inference (headatlas validate), mean over templates; " +
        "without / with context."));
    }
    var evidence = this.evidenceList(i);
    if (evidence) {
      side.appendChild(el("h3", null, "Evidence (source \u2192 the head's top tokens)"));
      side.appendChild(evidence);
    }
    var ops = m.salient[String(i)];
    if (ops && ops.length) {
      side.appendChild(el("h3", null, "What it writes (OV): salient operations"));
      var ul = el("ul", "ops salient");
      ops.forEach(function (op) {
        var li = el("li");
        li.appendChild(el("span", "tok", op[0]));
        li.appendChild(el("span", "muted", "\u2192"));
        op[2].forEach(function (t) { li.appendChild(el("span", "tok", t)); });
        if (op[1] !== null) li.appendChild(el("span", "muted", "\u03c3 " + op[1]));
        if (op[3] && op[3].length) li.appendChild(el("span", "muted", "[" + op[3].join(", ") + "]"));
        ul.appendChild(li);
      });
      side.appendChild(ul);
    }
    var reads = this.qkSection(i);
    if (reads) side.appendChild(reads);
    var d = m.descriptions[String(i)];
    if (d) {
      side.appendChild(el("h3", null, "Description"));
      if (d[0] === "ok") {
        side.appendChild(el("p", "desc", d[1]));
        if (d[2]) side.appendChild(el("p", "muted", "pattern: " + d[2]));
      } else {
        side.appendChild(el("p", "muted", "no description (" + d[0] + ")"));
      }
    }
    var alike = m.similar[i];
    if (alike && alike.length) {
      side.appendChild(el("h3", null, "Most alike heads (cosine of score vectors)"));
      var list = el("ul", "ops similar");
      for (var k = 0; k < alike.length; k += 2) {
        var li = el("li");
        li.appendChild(this.headLink(alike[k]));
        li.appendChild(el("span", "muted", (alike[k + 1] / 1000).toFixed(3)));
        var best = this.rankedRelations(alike[k])[0];
        if (best) li.appendChild(el("span", "muted", "top: " + m.relations[best[0]] + " " + fmt(best[1])));
        list.appendChild(li);
      }
      side.appendChild(list);
    }
    var ovAlike = m.alike_ov && m.alike_ov[i];
    if (ovAlike && ovAlike.length > 1) {
      var chance = ovAlike[ovAlike.length - 1];
      side.appendChild(el("h3", null, "Most alike heads (OV subspace affinity; chance " + fmt(chance) + ")"));
      var olist = el("ul", "ops alike-ov");
      for (var q = 0; q + 1 < ovAlike.length; q += 2) {
        var oli = el("li");
        oli.appendChild(this.headLink(ovAlike[q]));
        oli.appendChild(el("span", "muted", fmt(ovAlike[q + 1])));
        olist.appendChild(oli);
      }
      side.appendChild(olist);
      side.appendChild(el("p", "muted", "affinity: mean squared cosine of the principal angles between the " +
        "heads' W_V\u00b7W_O output subspaces (1: one contains the other)."));
    }
  };

  /* What the head reads: its QK scores (map --qk) with whether each reading is validated. */
  var QK_SOURCES = { "validate --experiment qk": "this map's validate --experiment qk", "docs/qk.md": "docs/qk.md" };
  function qkStatus(check) {
    if (!check || check.ok === null || check.ok === undefined) return ["not validated on this model", "unvalidated"];
    var r = "r " + Number(check.r).toFixed(2);
    var from = QK_SOURCES[check.source] || check.source;
    if (check.ok) return ["validated: " + r + " \u2265 " + Number(check.target).toFixed(2) + " (" + from + ")", "validated"];
    return ["unvalidated on this model: " + r + " < " + Number(check.target).toFixed(2) + " (" + from + ")", "unvalidated"];
  }
  function isClassColumn(name) { return /auc|class/i.test(name); }
  /* A class column's check: the classes' mean, failed where its own class misses the target. */
  function classCheck(classes, name) {
    var own = null, best = "";
    Object.keys(classes.per_class || {}).forEach(function (c) {
      if (name.indexOf(c) >= 0 && c.length > best.length) { best = c; own = classes.per_class[c]; }
    });
    if (own === null || classes.ok !== true || own >= classes.target) return classes;
    return { r: own, target: classes.target, ok: false, source: classes.source };
  }

  Model.prototype.qkSection = function (i) {
    var qk = this.m.qk;
    if (!qk) return null;
    var box = el("div", "qk");
    box.appendChild(el("h3", null, "What it reads (QK, W_Q\u00b7W_K; " + qk.reading.inputs + " inputs, rotary " + qk.reading.rotary + ")"));
    var table = el("table", "qk-table"), head = el("tr"), tbody = el("tbody");
    var withMore = qk.extra.some(function (x) { return x[2].length > 0; });
    ["reading", "score"].concat(withMore ? ["null / more"] : [], ["against inference"]).forEach(function (h) { head.appendChild(el("th", null, h)); });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var notes = [];
    function row(name, value, more, check, cls) {
      var st = qkStatus(check), tr = el("tr", cls + " " + st[1]);
      tr.appendChild(el("td", "rel", name));
      tr.appendChild(el("td", "num score", fmt(value)));
      if (withMore) tr.appendChild(el("td", "muted more", more));
      tr.appendChild(el("td", "status " + st[1], st[0]));
      tbody.appendChild(tr);
      if (st[1] !== "validated" && notes.indexOf(name) < 0) notes.push(name);
    }
    row("duplicate-token", qk.dup[i], "", qk.checks.dup, "qk-dup");
    qk.extra.forEach(function (x) {
      var more = x[2].map(function (c) { return c[0] + " " + fmt(c[1][i]); }).join(", ");
      row(x[0], x[1][i], more, isClassColumn(x[0]) ? classCheck(qk.checks.classes, x[0]) : null, "qk-extra");
    });
    table.appendChild(tbody);
    box.appendChild(table);
    if (notes.length) {
      box.appendChild(el("p", "muted qk-note", "Unvalidated readings (" + notes.join(", ") + ") are shown, " +
        "not used for labels: on this model they do not predict attention at inference (targets: duplicate-token " +
        "r \u2265 0.8, class preference mean r \u2265 0.7; docs/qk.md)."));
    }
    [["keys", "Keys it most attends to"], ["queries", "Queries that most attend"]].forEach(function (spec) {
      var toks = qk[spec[0]][String(i)];
      if (!toks || !toks.length) return;
      var line = el("div", "qk-" + spec[0]);
      line.appendChild(el("span", "muted", spec[1] + ": "));
      toks.forEach(function (t) { line.appendChild(el("span", "tok", t)); });
      box.appendChild(line);
    });
    return box;
  };

  /* Search: a head name pins it; a relation colours the grid by it and lists its best heads;
     a token lists the heads whose salient operations or evidence hold it. */
  Model.prototype.showSearch = function (text) {
    var self = this, m = this.m, out = this.results, q = text.trim().toLowerCase(), MAX = 12;
    out.replaceChildren();
    if (!q) return;
    function item(label, node) {
      var li = el("li");
      li.appendChild(el("span", "muted", label));
      li.appendChild(node);
      out.appendChild(li);
      return li;
    }
    var i = this.parseHead(q);
    if (i >= 0) item("head", this.headLink(i));
    var norm = function (s) { return s.toLowerCase().replace(/[_\s]+/g, " "); }, nq = norm(q);
    m.relations.forEach(function (name, r) {
      if (norm(name).indexOf(nq) < 0) return;
      var b = el("button", "rel-link", name);
      b.type = "button";
      b.addEventListener("click", function () { self.select.value = String(r); self.mode = r; self.recolour(); });
      var li = item("relation", b);
      var best = [];
      for (var j = 0; j < self.nCells; j++) if (m.score[r][j] >= m.threshold) best.push(j);
      best.sort(function (a, c) { return m.score[r][c] - m.score[r][a] || a - c; });
      best.slice(0, 5).forEach(function (j) { li.appendChild(self.headLink(j, self.headName(j) + " " + fmt(m.score[r][j]))); });
    });
    var hits = [], seen = {};
    function add(j, why) { if (!seen[j] && hits.length < MAX) { seen[j] = 1; hits.push([j, why]); } }
    var tok = function (t) { return t.trim().toLowerCase() === q; };
    Object.keys(m.evidence).forEach(function (key) {
      m.evidence[key].forEach(function (e) {
        if (tok(e[2]) || tok(e[3])) add(+key, m.relations[e[0]] + ": " + e[2].trim() + " \u2192 " + e[3].trim());
      });
    });
    Object.keys(m.salient).forEach(function (key) {
      m.salient[key].forEach(function (op) {
        if (tok(op[0]) || op[2].some(tok)) add(+key, "salient: " + op[0].trim() + " \u2192 " + op[2].map(function (t) { return t.trim(); }).join(" "));
      });
    });
    if (m.qk) {
      ["keys", "queries"].forEach(function (side) {
        Object.keys(m.qk[side]).forEach(function (key) {
          if (m.qk[side][key].some(tok)) add(+key, "reads (QK " + side + "): " + m.qk[side][key].map(function (t) { return t.trim(); }).join(" "));
        });
      });
    }
    hits.sort(function (a, b) { return a[0] - b[0]; });
    hits.forEach(function (h) { var li = item("token", self.headLink(h[0])); li.appendChild(el("span", "muted", h[1])); });
    if (!out.childNodes.length) out.appendChild(el("li", "muted", "nothing matches"));
  };

  /* Page: title, tabs when there are several models, one section per model. */
  var app = document.getElementById("app");
  var top = el("header", "top");
  top.appendChild(el("h1", null, "headatlas \u2014 attention heads by what they do"));
  var tabs = el("div", "tabs");
  tabs.setAttribute("role", "tablist");
  top.appendChild(tabs);
  app.appendChild(top);
  var applyingHash = false;
  /* The URL's #model/L12H2 follows the pinned head (not while the hash itself is applied). */
  function setHash(text) {
    if (applyingHash) return;
    try { history.replaceState(null, "", "#" + encodeURI(text)); } catch (err) { /* file: URLs in some browsers */ }
  }
  var models = DATA.models.map(function (m, k) { return new Model(m, k); });
  var active = 0;
  function activate(k) {
    active = k;
    models.forEach(function (model, j) {
      model.root.classList.toggle("active", j === k);
      model.tab.setAttribute("aria-selected", j === k ? "true" : "false");
    });
    tooltip.classList.remove("on");
  }
  models.forEach(function (model, k) {
    var tab = el("button", null, model.m.display_name);
    tab.type = "button";
    tab.setAttribute("role", "tab");
    tab.addEventListener("click", function () { activate(k); setHash(models[k].m.name); });
    model.tab = tab;
    tabs.appendChild(tab);
    app.appendChild(model.root);
  });
  if (models.length < 2) tabs.style.display = "none";
  /* #name/L12H2 (name: the model's name or its results folder) opens that head; #name its tab. */
  function applyHash() {
    var text;
    try { text = decodeURIComponent(location.hash.slice(1)); } catch (err) { return; }
    if (!text) return;
    var cut = text.lastIndexOf("/"), k = -1, i = -1;
    var find = function (name) {
      for (var j = 0; j < models.length; j++) if (models[j].m.name === name || models[j].m.slug === name) return j;
      return -1;
    };
    k = find(text);
    if (k < 0 && cut > 0) {
      k = find(text.slice(0, cut));
      if (k >= 0) i = models[k].parseHead(text.slice(cut + 1));
    }
    if (k < 0) { k = active; i = models[k].parseHead(text); }
    if (k < 0) return;
    applyingHash = true;
    try {
      activate(k);
      if (i >= 0) { models[k].pin(i); models[k].cells[i].scrollIntoView({ block: "nearest" }); }
    } finally { applyingHash = false; }
  }
  activate(0);
  applyHash();
  window.addEventListener("hashchange", applyHash);
  document.body.appendChild(tooltip);
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape") models.forEach(function (model) { if (model.pinned >= 0) model.pin(-1); });
    if (["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"].indexOf(e.key) < 0) return;
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    var t = e.target, tag = t && t.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    e.preventDefault();
    models[active].step(e.key);
  });
  window.headatlas = { models: models, readyAt: performance.now() };
  document.body.dataset.ready = "1";
})();
