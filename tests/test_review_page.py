"""Review page: thumbnails (crop size, red box, attention overlay), the unflagged sample, and the page itself,
opened in headless Chromium (pagination, class filter, every referenced file on disk, no external URL)."""
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlencode

import numpy as np
import pytest
from PIL import Image

from wildcapture.data.transforms import centre_crop_box
from wildcapture.detection.review import UnflaggedSample, fit_size, write_review_assets
from wildcapture.detection.review_page import Card, asset_names, has_review_assets, review_folder, write_review_page
from wildcapture.errors import DatasetError
from wildcapture.megadetector import pixel_box

BOX = (0.25, 0.2, 0.5, 0.5)  # normalised x, y, w, h
HEATMAP = np.add.outer(np.arange(14.0), np.arange(14.0))  # a smooth ramp: every cell a different colour
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install "
                                                             "chromium); CI installs it")


def _grey(path: Path, size=(640, 480)) -> Path:
    """Write a grey image with a soft horizontal ramp (no red anywhere) to `path`; return it."""
    ramp = np.linspace(90, 160, size[0], dtype=np.float32)[None, :, None].repeat(size[1], 0).repeat(3, 2)
    Image.fromarray(ramp.astype(np.uint8)).save(path, quality=95)
    return path


def _red(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(int)
    return (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)


def _load(folder: Path, item: int, kind: str) -> np.ndarray:
    return np.asarray(Image.open(folder / f"{item:06d}-{kind}.jpg").convert("RGB"))


@pytest.mark.parametrize("size, suffix", [((640, 480), ".png"), ((2048, 1152), ".jpg")])
def test_assets_crop_size_red_box_and_overlay(tmp_path, size, suffix):
    image = _grey(tmp_path / f"frame{suffix}", size)
    folder = tmp_path / "X_review"
    write_review_assets(folder, 7, str(image), BOX, 0.1, HEATMAP, (224, 224))
    assert sorted(p.name for p in folder.iterdir()) == ["000007-attention.jpg", "000007-crop.jpg", "000007-full.jpg"]
    x0, y0, x1, y1 = pixel_box(BOX, size, 0.1)
    crop, attention, full = (_load(folder, 7, kind) for kind in ("crop", "attention", "full"))
    assert (crop.shape[1], crop.shape[0]) == fit_size((x1 - x0, y1 - y0), 200)
    if size == (640, 480):
        assert crop.shape[:2] == (150, 200)  # box + margin 384 x 288 px, long side to 200
    assert (full.shape[1], full.shape[0]) == fit_size(size, 800)
    scale = full.shape[1] / size[0]
    bx0, by0, bx1, by1 = (round(v * scale) for v in pixel_box(BOX, size))
    assert _red(full[by0 + 5:by1 - 5, bx0]).all() and _red(full[by0 + 5:by1 - 5, bx1 - 1]).all()
    assert _red(full[by0, bx0 + 5:bx1 - 5]).all() and _red(full[by1 - 1, bx0 + 5:bx1 - 5]).all()
    assert _red(full).mean() < 0.05 and not _red(full[by0 + 10:by1 - 10, bx0 + 10:bx1 - 10]).any()

    diff = np.abs(attention.astype(int) - crop.astype(int)).sum(axis=2)
    cx0, cy0, cx1, cy1 = (round(v * crop.shape[1] / (x1 - x0)) for v in centre_crop_box(x1 - x0, y1 - y0, (224, 224)))
    assert diff[cy0 + 3:cy1 - 3, cx0 + 3:cx1 - 3].mean() > 60  # the map, blended at alpha 0.5
    outside = np.concatenate([diff[:, :cx0 - 2].ravel(), diff[:, cx1 + 2:].ravel()])
    assert outside.size and outside.mean() < 10  # only JPEG noise where the model did not look


def test_assets_whole_image_exif_and_names(tmp_path):
    image = Image.fromarray(np.full((300, 1000, 3), 120, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 300 x 1000
    image.save(tmp_path / "rotated.jpg", exif=exif)
    folder = review_folder(tmp_path / "season.html")
    write_review_assets(folder, 123, str(tmp_path / "rotated.jpg"), None, 0.1, HEATMAP[None], (224, 224))
    assert folder == tmp_path / "season_review" and has_review_assets(folder, 123)
    assert not has_review_assets(folder, 124)
    assert Image.open(folder / "000123-crop.jpg").size == (60, 200)
    full = _load(folder, 123, "full")
    assert (full.shape[1], full.shape[0]) == (240, 800) and not _red(full).any()  # whole image: no box
    assert asset_names(123, tmp_path / "season.html") == {
        "crop": "season_review/000123-crop.jpg", "attention": "season_review/000123-attention.jpg",
        "full": "season_review/000123-full.jpg"}


def test_assets_unreadable_image_is_a_dataset_error(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    for path in (tmp_path / "broken.jpg", tmp_path / "missing.jpg"):
        with pytest.raises(DatasetError, match=re.escape(str(path))):
            write_review_assets(tmp_path / "r", 0, str(path), BOX, 0.0, HEATMAP, (224, 224))
    assert not (tmp_path / "r").exists()  # nothing written


def test_unflagged_sample_is_seeded_and_order_independent():
    n = 1000
    one = UnflaggedSample(20, seed=3, n_items=n)
    for item in range(n):
        if one.wants(item):
            one.offer(item, f"card {item}")
    shards = [UnflaggedSample(20, seed=3, n_items=n) for _ in range(2)]
    for item in reversed(range(n)):
        shards[item % 2].offer(item, f"card {item}")
    merged = UnflaggedSample(20, seed=3, n_items=n)
    for shard in shards:
        for value in shard.values():
            merged.offer(int(value.split()[1]), value)
    assert len(one.values()) == 20 and one.values() == merged.values()
    other = UnflaggedSample(20, seed=4, n_items=n)
    for item in range(n):
        other.offer(item, f"card {item}")
    assert other.values() != one.values()
    assert 40 < sum(one.wants(i) for i in range(n)) < 120  # about 4 x 20 candidates
    assert UnflaggedSample(0, 3, n).values() == [] and not UnflaggedSample(0, 3, n).wants(1)


# ---------------------------------------------------------------- the page


CLASSES = ('Odd <b>&"class', "Red Fox", "Wild Boar")


def _season(folder: Path, name: str, n_flagged: int, n_sample: int, page_size: int) -> tuple[Path, list[Card]]:
    """Write thumbnails and a page `name` for n_flagged + n_sample cards of one frame; return (page, flagged
    cards in page order)."""
    out_html = folder / name
    frame = _grey(folder / "frame.png", (320, 240))
    rng = np.random.default_rng(0)
    cards = []
    for item in range(n_flagged + n_sample):
        write_review_assets(review_folder(out_html), item, str(frame), BOX, 0.1, HEATMAP, (224, 224))
        cards.append(Card(item, f'cam <1>/&"IMG_{item}.JPG', BOX, CLASSES[item % 3], float(rng.random()),
                          float(rng.random()) + (1 if item < n_flagged else 0), float(rng.random()), item < n_flagged))
    flagged = sorted(cards[:n_flagged], key=lambda c: -c.ood_score)
    info = {"detections scored": str(len(cards)), "flagged": str(n_flagged), "threshold": "1.0", "score": "cae"}
    assert write_review_page(out_html, iter(flagged), cards[n_flagged:], info, page_size=page_size) == n_flagged
    return out_html, flagged


class _Dom(HTMLParser):
    """Collects the cards (their attributes and section), every src/href, and the page-info text."""

    def __init__(self):
        super().__init__()
        self.cards, self.links, self.section, self.page_info, self._in_info = [], [], None, "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if attrs.get(k)]
        if tag == "section":
            self.section = attrs.get("id")
        if "card" in (attrs.get("class") or "").split():
            self.cards.append({**attrs, "section": self.section})
        self._in_info = attrs.get("id") == "page-info"

    def handle_endtag(self, tag):
        self._in_info = False

    def handle_data(self, data):
        if self._in_info:
            self.page_info += data


def _dump(page: Path, tmp_path: Path, fragment: str = "") -> _Dom:
    """Open `page` (with URL `fragment`) in headless Chromium and return the parsed DOM after its scripts ran."""
    url = page.as_uri() + (f"#{fragment}" if fragment else "")
    command = [CHROMIUM, "--no-sandbox", "--headless", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}",
               "--dump-dom", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    dom = _Dom()
    dom.feed(result.stdout)
    return dom


def _flagged(dom: _Dom) -> list[dict]:
    return [c for c in dom.cards if c["section"] == "flagged"]


def _check_links_exist(dom: _Dom, page: Path) -> None:
    assert dom.links, "the DOM references no file"
    for link in dom.links:
        assert not link.startswith(("http:", "https:", "//", "#")), link
        assert (page.parent / unquote(link)).is_file(), link


def test_page_has_no_external_url_and_escapes_text(tmp_path):
    page, _ = _season(tmp_path, "X.html", 4, 2, 100)
    texts = [page.read_text()] + [p.read_text() for p in review_folder(page).rglob("*.js")]
    for text in texts:
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
        assert "http://" not in text and "https://" not in text
    assert "<b>" not in page.read_text() and 'data-class="Odd &lt;b&gt;&amp;&quot;class"' in page.read_text()


def test_page_keeps_the_previous_run_when_writing_fails(tmp_path):
    page, flagged = _season(tmp_path, "X.html", 4, 2, 100)
    before, folders = page.read_text(), sorted(review_folder(page).glob("cards-*"))
    with pytest.raises(ValueError, match="sorted highest first"):
        write_review_page(page, reversed(flagged), [], {}, page_size=2)
    assert page.read_text() == before and sorted(review_folder(page).glob("cards-*")) == folders
    write_review_page(page, flagged, [], {})
    assert len(list(review_folder(page).glob("cards-*"))) == 1 and page.read_text() != before


@needs_chromium
def test_browser_first_page_shows_every_flagged_card_in_order(tmp_path):
    page, flagged = _season(tmp_path, "season 1 #a.html", 7, 3, 100)
    dom = _dump(page, tmp_path)
    cards = _flagged(dom)
    assert [int(c["data-item"]) for c in cards] == [c.item for c in flagged]
    scores = [float(c["data-score"]) for c in cards]
    assert scores == sorted(scores, reverse=True)
    sample = [c for c in dom.cards if c["section"] == "sample"]
    assert len(sample) == 3 and all("unflagged" in c["class"] for c in sample)
    assert dom.page_info == "page 1 of 1 (7 flagged)"
    _check_links_exist(dom, page)


@needs_chromium
def test_browser_pages_and_class_filter_reach_every_card(tmp_path):
    page, flagged = _season(tmp_path, "X.html", 14, 2, 4)
    seen = []
    for number, expected in ((1, 4), (2, 4), (3, 4), (4, 2)):
        dom = _dump(page, tmp_path, f"page={number}" if number > 1 else "")
        assert len(_flagged(dom)) == expected and dom.page_info == f"page {number} of 4 (14 flagged)"
        seen += [int(c["data-rank"]) for c in _flagged(dom)]
        _check_links_exist(dom, page)
    assert seen == list(range(1, 15))  # every flagged card, once, in score order
    odd = [c.item for c in flagged if c.predicted_class == CLASSES[0]]
    assert len(odd) == 5  # items 0, 3, 6, 9, 12, in score order
    for number, shown in ((1, odd[:4]), (2, odd[4:])):
        dom = _dump(page, tmp_path, urlencode({"class": CLASSES[0], "page": number}))
        assert [int(c["data-item"]) for c in _flagged(dom)] == shown
        assert {c["data-class"] for c in _flagged(dom)} == {CLASSES[0]}
        assert dom.page_info == f"page {number} of 2 (5 flagged)"


@needs_chromium
def test_browser_screenshot(tmp_path):
    page, _ = _season(tmp_path, "X.html", 3, 1, 100)
    shot = tmp_path / "x.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", f"--user-data-dir={tmp_path / 'chromium'}",
                    f"--screenshot={shot}", "--window-size=1280,900", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (900, 1280, 3) and pixels.std() > 10
