"""The review page's inline CSS and JavaScript (no external resource: the page works from file://).

The script reads its state from the URL hash, ``#class=<predicted class>&page=<n>`` (both optional; page
1-based), so every view has an address, the browser's back button works and a headless browser can open
any page. For a view it loads ``<cards>/<view>-<page:04d>.js`` with a <script src> element (unlike fetch,
this works over file://); that file calls ``reviewChunk(key, cards)``. ``<view>`` is ``all`` or the
class's key (``c0``, ``c1``...: the <option> values); counts come from the options' ``data-count``.
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .4em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .5em; }
dl.info { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; margin: 0; }
dl.info dt { color: #666; } dl.info dd { margin: 0; }
.controls { display: flex; flex-wrap: wrap; gap: .6em; align-items: center; margin: .6em 0; }
.controls input { width: 5em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; width: 412px;
        font-size: .85em; }
.card.unflagged { border-color: #9c9; }
.imgs { display: flex; gap: 4px; }
.imgs img { width: 200px; height: 200px; object-fit: contain; background: #eee; display: block; }
.cls { font-weight: 600; font-size: 1.1em; margin-top: 4px; }
.file { color: #555; overflow-wrap: anywhere; }
.caps { display: flex; gap: 4px; color: #888; font-size: .85em; }
.caps span { width: 200px; }
.empty { color: #666; font-style: italic; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var section = document.getElementById("flagged");
  var pageSize = Number(section.dataset.pageSize), cardsDir = section.dataset.cards;
  var select = document.getElementById("class-filter"), grid = document.getElementById("flagged-cards");
  var info = document.getElementById("page-info"), jump = document.getElementById("page-jump");
  var prev = document.getElementById("prev"), next = document.getElementById("next");
  var wanted = null, loader = null, current = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function short(x) { return String(Number(Number(x).toPrecision(4))); }
  function image(src, alt) {
    var img = el("img");
    img.loading = "lazy"; img.alt = alt; img.src = src;
    return img;
  }
  function card(c, flagged) {
    var d = el("div", flagged ? "card flagged" : "card unflagged");
    d.dataset.item = c.item; d.dataset.score = c.score; d.dataset.class = c.cls;
    if (c.rank) d.dataset.rank = c.rank;
    var imgs = el("div", "imgs"), caps = el("div", "caps"), link = el("a", "", "full image with box");
    imgs.append(image(c.crop, "crop"), image(c.attention, "attention the CAE scored"));
    caps.append(el("span", "", "crop"), el("span", "", "attention (model's view outlined)"));
    link.href = c.full; link.target = "_blank";
    var file = el("div", "file", c.file); file.title = c.file;
    var nums = (c.rank ? "#" + c.rank + " \u00b7 " : "") + "OOD score " + short(c.score) +
               " \u00b7 unknown " + c.unknown.toFixed(2);
    d.append(imgs, caps, el("div", "cls", c.cls + " " + c.p.toFixed(2)), el("div", "nums", nums), file, link);
    return d;
  }
  function state() {
    var h = new URLSearchParams(location.hash.slice(1)), name = h.get("class") || "";
    var opt = Array.prototype.find.call(select.options, function (o) { return o.dataset.class === name; });
    opt = opt || select.options[0];
    var count = Number(opt.dataset.count), pages = Math.max(1, Math.ceil(count / pageSize));
    var page = parseInt(h.get("page") || "1", 10);
    page = Math.min(Math.max(isNaN(page) ? 1 : page, 1), pages);
    return {opt: opt, count: count, page: page, pages: pages};
  }
  function go(name, page) {
    var h = new URLSearchParams();
    if (name) h.set("class", name);
    if (page > 1) h.set("page", page);
    location.hash = h.toString();
  }
  function show() {
    var s = state();
    current = s; select.value = s.opt.value;
    info.textContent = "page " + s.page + " of " + s.pages + " (" + s.count + " flagged)";
    prev.disabled = s.page <= 1; next.disabled = s.page >= s.pages;
    jump.max = s.pages; jump.value = s.page;
    if (s.count === 0) { grid.replaceChildren(el("p", "empty", "No detection was flagged.")); return; }
    wanted = s.opt.value + "-" + String(s.page - 1).padStart(4, "0");
    if (loader) loader.remove();
    loader = document.createElement("script");
    loader.src = cardsDir + "/" + wanted + ".js";
    loader.onerror = function () { grid.replaceChildren(el("p", "empty", "Cannot load " + loader.src)); };
    document.body.appendChild(loader);
  }
  window.reviewChunk = function (key, cards) {
    if (key === "sample") {
      var box = document.getElementById("sample-cards");
      box.replaceChildren.apply(box, cards.map(function (c) { return card(c, false); }));
      if (!cards.length) box.appendChild(el("p", "empty", "No unflagged detection to show."));
    } else if (key === wanted) {
      grid.replaceChildren.apply(grid, cards.map(function (c) { return card(c, true); }));
    }
  };
  function move(page) { go(current.opt.dataset.class, page); section.scrollIntoView(); }
  select.addEventListener("change", function () {
    go(select.options[select.selectedIndex].dataset.class, 1);
  });
  prev.addEventListener("click", function () { move(current.page - 1); });
  next.addEventListener("click", function () { move(current.page + 1); });
  jump.addEventListener("change", function () { move(Number(jump.value)); });
  window.addEventListener("hashchange", show);
  show();
})();
"""
