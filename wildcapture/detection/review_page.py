"""A static, self-contained review page ``X.html`` of a detection run's flagged detections.

No server, no network: CSS and JavaScript are inline (STYLE, SCRIPT), the thumbnails are the files
`review.write_review_assets` writes into ``X_review/``, and the card data are JavaScript files that the page loads
with <script src> (works over file://), one file per page of cards. ``X_review/cards-<token>/`` holds
``all-0000.js, all-0001.js, ...`` (every flagged card, most unusual first, `PAGE_SIZE` per file) and
``c<k>-0000.js, ...`` (the same for each predicted class k), so the browser only ever parses one page
whatever the season's size, and the class filter pages through all of a class's flagged cards. Below
them, a sample of unflagged detections (``sample.js``) in the same card layout, for contrast.

Each run writes its card files into a fresh ``cards-<token>`` folder and renames the page over the old
one last, then removes older card folders: a failed run leaves the previous page working.
"""
from __future__ import annotations

import html
import json
import math
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

from wildcapture.storage import write_text

ASSET_KINDS = ("crop", "attention", "full")
PAGE_SIZE = 100  # cards per page (and per card file)
ALL = "all"  # the view of every class
SAMPLE = "sample"


def review_folder(out_html: Path) -> Path:
    """Return the folder of the page's thumbnails and card files: ``X_review/`` beside ``X.html``."""
    out_html = Path(out_html)
    return out_html.with_name(f"{out_html.stem}_review")


def asset_file_name(item: int, kind: str) -> str:
    """Return the file name of item ``item``'s thumbnail ``kind`` (one of `ASSET_KINDS`), e.g.
    ``000123-crop.jpg``."""
    if kind not in ASSET_KINDS or item < 0:
        raise ValueError(f"no review asset {kind!r} for item {item}; kinds: {ASSET_KINDS}, items >= 0")
    return f"{item:06d}-{kind}.jpg"


def asset_names(item: int, out_html: Path) -> dict[str, str]:
    """Return {kind: path of that thumbnail relative to the page's folder} for each of `ASSET_KINDS`, e.g.
    ``{"crop": "X_review/000123-crop.jpg", ...}`` for the page ``X.html`` (a file path, not URL-quoted)."""
    folder = review_folder(Path(out_html)).name
    return {kind: f"{folder}/{asset_file_name(item, kind)}" for kind in ASSET_KINDS}


def has_review_assets(folder: Path, item: int) -> bool:
    """Return True when ``folder`` holds all three thumbnails of ``item`` (what a resumed run keeps)."""
    return all((Path(folder) / asset_file_name(item, kind)).is_file() for kind in ASSET_KINDS)


@dataclass(frozen=True)
class Card:
    """One detection on the page: its `item` (row index of the run, which names its thumbnails), `image`
    (MegaDetector's `file`), normalised `bbox` [x, y, w, h] (None: a whole image), `predicted_class` and
    `confidence` (its probability), `ood_score` (higher = more unusual), `unknown_confidence` in [0, 1],
    and whether it is `flagged` (score above the threshold)."""

    item: int
    image: str
    bbox: tuple[float, float, float, float] | None
    predicted_class: str
    confidence: float
    ood_score: float
    unknown_confidence: float
    flagged: bool


def write_review_page(out_html: Path, flagged: Iterable[Card], sample: Sequence[Card],
                      title_info: dict[str, str], *, page_size: int = PAGE_SIZE) -> int:
    """Write the review page ``out_html`` and its card files in `review_folder` (module docstring); returns
    the number of flagged cards written.

    ``flagged``: the flagged cards, which the CALLER sorts by ood_score, highest first (ValueError
    otherwise); streamed: at most one page per view (classes + 1) is held. ``sample``: unflagged cards
    shown for contrast (e.g. `review.UnflaggedSample`), shown in the order given. ``title_info``:
    the header's facts, e.g. {"detections scored": "1234", "flagged": "56", "threshold": "0.031",
    "score": "cae"}, shown as given. Every file is written atomically.
    """
    out_html = Path(out_html)
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    folder = review_folder(out_html)
    cards_dir = folder / f"cards-{secrets.token_hex(4)}"
    try:
        views = _CardFiles(cards_dir, page_size, out_html)
        for card in flagged:
            views.add(card)
        views.close()
        if any(card.flagged for card in sample):
            raise ValueError("the unflagged sample holds a flagged card")
        sample_cards = [_card_data(card, out_html, None) for card in sample]
        write_text(cards_dir / f"{SAMPLE}.js", _chunk_js(SAMPLE, sample_cards))
        page = _page_html(out_html, views, len(sample_cards), title_info, _url(folder.name, cards_dir.name))
        write_text(out_html, page)
    except BaseException:
        shutil.rmtree(cards_dir, ignore_errors=True)
        raise
    for old in folder.glob("cards-*"):
        if old.is_dir() and old != cards_dir:
            shutil.rmtree(old, ignore_errors=True)
    return views.counts[ALL]


class _CardFiles:
    """Writes the flagged cards into one sequence of card files per view (`ALL` and each class)."""

    def __init__(self, directory: Path, page_size: int, out_html: Path):
        self.directory, self.page_size, self.out_html = directory, page_size, out_html
        self.class_keys: dict[str, str] = {}  # predicted class -> its view key, c0, c1... by first appearance
        self.counts: dict[str, int] = {ALL: 0}
        self.buffers: dict[str, list[dict[str, Any]]] = {ALL: []}
        self.last_score = math.inf

    def add(self, card: Card) -> None:
        """Add the next flagged card (ValueError if it is unflagged, out of order or not finite)."""
        if not card.flagged or not math.isfinite(card.ood_score) or card.ood_score > self.last_score:
            raise ValueError(f"flagged cards must be flagged, with finite ood_scores sorted highest first; item "
                             f"{card.item} has ood_score {card.ood_score} after {self.last_score} (flagged: "
                             f"{card.flagged})")
        self.last_score = card.ood_score
        key = self.class_keys.setdefault(card.predicted_class, f"c{len(self.class_keys)}")
        data = _card_data(card, self.out_html, self.counts[ALL] + 1)
        for view in (ALL, key):
            self.buffers.setdefault(view, []).append(data)
            self.counts[view] = self.counts.get(view, 0) + 1
            if len(self.buffers[view]) == self.page_size:
                self._flush(view)

    def close(self) -> None:
        """Write every view's last, partly filled, page."""
        for view, buffer in self.buffers.items():
            if buffer:
                self._flush(view)

    def _flush(self, view: str) -> None:
        page = (self.counts[view] - 1) // self.page_size
        key = f"{view}-{page:04d}"
        write_text(self.directory / f"{key}.js", _chunk_js(key, self.buffers[view]))
        self.buffers[view] = []


def _url(*parts: str) -> str:
    """Return the relative URL of the file path ``parts`` joined by '/', each character that needs it
    percent-encoded (a page named ``a#b.html`` has the folder ``a#b_review``)."""
    return quote("/".join(parts))


def _card_data(card: Card, out_html: Path, rank: int | None) -> dict[str, Any]:
    """Return what the page's script shows of ``card`` (its thumbnails as URLs relative to the page)."""
    data = {"item": card.item, "file": card.image, "cls": card.predicted_class,
            "p": round(float(card.confidence), 4), "score": float(card.ood_score),
            "unknown": round(float(card.unknown_confidence), 4)}
    data.update({kind: _url(path) for kind, path in asset_names(card.item, out_html).items()})
    if rank is not None:
        data["rank"] = rank
    return data


def _chunk_js(key: str, cards: list[dict[str, Any]]) -> str:
    """Return a card file's text: one call ``reviewChunk(key, [card, ...]);`` (ASCII JSON, one card a line)."""
    lines = ",\n".join(json.dumps(c, ensure_ascii=True, allow_nan=False, separators=(",", ":")) for c in cards)
    return f"reviewChunk({json.dumps(key)}, [\n{lines}\n]);\n"


def _page_html(out_html: Path, views: _CardFiles, n_sample: int, title_info: dict[str, str],
               cards_url: str) -> str:
    """Return the page's HTML: header, class filter and page controls, the cards' places, inline CSS/JS."""
    esc = html.escape
    info = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>" for k, v in title_info.items())
    total = views.counts[ALL]
    options = [f'<option value="{ALL}" data-class="" data-count="{total}">all classes ({total})</option>']
    by_count = sorted(views.class_keys.items(), key=lambda kv: (-views.counts[kv[1]], kv[0]))
    options += [f'<option value="{key}" data-class="{esc(name)}" data-count="{views.counts[key]}">'
                f'{esc(name)} ({views.counts[key]})</option>' for name, key in by_count]
    title = esc(f"Review of {out_html.stem}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title><style>{STYLE}</style></head>
<body>
<header><h1>{title}</h1><dl class="info">{info}</dl></header>
<noscript><p>This page needs JavaScript to show its cards.</p></noscript>
<section id="flagged" data-page-size="{views.page_size}" data-cards="{esc(cards_url)}">
<h2>Flagged detections, most unusual first ({total})</h2>
<div class="controls"><label>predicted class <select id="class-filter">{"".join(options)}</select></label>
<button id="prev" type="button">&larr; previous</button><span id="page-info"></span>
<button id="next" type="button">next &rarr;</button>
<label>go to page <input id="page-jump" type="number" min="1" value="1"></label></div>
<div id="flagged-cards" class="cards"></div>
</section>
<section id="sample">
<h2>Not flagged: a random sample of {n_sample} detections below the threshold, for contrast</h2>
<div id="sample-cards" class="cards"></div>
</section>
<script>{SCRIPT}</script>
<script src="{esc(cards_url)}/{SAMPLE}.js"></script>
</body></html>
"""


# The page's inline CSS and JavaScript. The script reads its state from the URL hash, #class=<predicted
# class>&page=<n> (both optional, page 1-based), so every view has an address and the back button works; a
# view loads <cards>/<view>-<page:04d>.js with a <script src> element (works over file://, unlike fetch),
# which calls reviewChunk(key, cards). <view> is "all" or the class's key (c0, c1...: the <option> values).
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
