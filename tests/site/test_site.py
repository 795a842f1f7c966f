"""The recipe site builder (docs/build_site.py) without a browser: what goes on the pages, which
notebooks stop the build, and how many bytes of images a page carries."""

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from site_notebooks import (  # noqa: F401 (site, recipes: fixtures)
    REPOSITORY_ROOT, TEST_REPOSITORY, image_output, png_base64, recipes, site, write_notebook)


class Elements(HTMLParser):
    """Every start tag's attributes, and the text of each ``class="card"`` element."""

    def __init__(self, text):
        super().__init__()
        self.tags = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def all(self, tag, css_class=None):
        return [attrs for name, attrs in self.tags if name == tag and
                (css_class is None or css_class in (attrs.get("class") or "").split())]


def build(site, recipes, out, **kwargs):
    return site.build_site(recipes, out, repository=TEST_REPOSITORY, api_package=None, **kwargs)


def test_index_cards_pages_and_links(site, recipes, tmp_path):
    out = tmp_path / "site"
    summary = build(site, recipes, out)
    assert summary["notebooks"] == 3
    index = (out / "index.html").read_text()
    page = Elements(index)
    cards = page.all("li", "card")
    assert len(cards) == 3
    # Sections in order, the benchmark notebook under Benchmarks whatever its folder.
    assert [m for m in re.findall(r"<h2>(\w+)</h2>", index)] == ["NLP", "CV", "Benchmarks"]
    assert index.index("The benchmark") > index.index("Benchmarks</h2>")
    # Title from the first H1 (inline markdown rendered), description = the paragraph after it.
    assert "Hello <em>text</em>" in index
    assert "A first recipe about <code>tokens</code>,\nin two lines." not in index  # joined to one line
    assert "A first recipe about <code>tokens</code>, in two lines." in index
    # Backend and wall time only where the notebook has them: 01_hello printed its backend and
    # carries the executor's timestamps (10:00:00 -> 10:01:10); 01_photos has neither.
    assert "torch" in index and "ran 1 min 10 s" in index
    photos_card = index[index.index("Photos"):index.index("</li>", index.index("Photos"))]
    assert "run-facts" not in photos_card
    # Every link is relative.
    for tag in page.all("a") + page.all("link") + page.all("img"):
        target = tag.get("href") or tag.get("src")
        assert not re.match(r"(/|file:)", target), target

    recipe = (out / "recipes" / "nlp" / "01_hello.html").read_text()
    links = Elements(recipe)
    hrefs = [a["href"] for a in links.all("a")]
    assert ("https://colab.research.google.com/github/example/cookbook/blob/main/recipes/nlp/"
            "01_hello.ipynb") in hrefs
    assert f"{TEST_REPOSITORY}/blob/main/recipes/nlp/01_hello.ipynb" in hrefs
    assert "01_hello.ipynb" in hrefs   # the download, copied byte for byte
    assert (out / "recipes" / "nlp" / "01_hello.ipynb").read_bytes() == \
        (recipes / "nlp" / "01_hello.ipynb").read_bytes()
    assert '<span class="kn">import</span>' in recipe   # highlighted by pygments
    assert "NBVAL_CHECK_OUTPUT" not in recipe           # nbval's markers are for CI, not readers
    assert "<h2" in recipe and "Next" in recipe         # later markdown kept
    assert recipe.count("<h1") == 1                    # the H1 is the page title, not repeated
    stderr = (out / "recipes" / "cv" / "01_photos.html").read_text()
    assert '<details class="output stderr">' in stderr and "a library warning" in stderr


def test_figures_are_scaled_and_photos_become_jpeg(site, recipes, tmp_path):
    out = tmp_path / "site"
    build(site, recipes, out)
    recipe = Elements((out / "recipes" / "nlp" / "01_hello.html").read_text())
    (plot,) = [img for img in recipe.all("img")]
    plot_file = out / "recipes" / "nlp" / plot["src"]
    with Image.open(plot_file) as image:
        assert image.format == "PNG" and image.size == (site.MAX_FIGURE_WIDTH, 240)  # 3000x600 scaled
    assert (int(plot["width"]), int(plot["height"])) == (site.MAX_FIGURE_WIDTH, 240)
    photo = Elements((out / "recipes" / "cv" / "01_photos.html").read_text()).all("img")[0]
    with Image.open(out / "recipes" / "cv" / photo["src"]) as image:
        assert image.format == "JPEG" and image.size == (site.MAX_FIGURE_WIDTH, 675)
    thumbnails = sorted(p.name for p in (out / "thumbnails").iterdir())
    assert thumbnails == ["cv-01_photos.jpg", "nlp-01_hello.jpg"]   # the benchmark has no figure
    for name in thumbnails:
        with Image.open(out / "thumbnails" / name) as image:
            assert image.width == site.THUMBNAIL_WIDTH


def test_a_notebook_without_a_title_stops_the_build_and_is_named(site, recipes, tmp_path):
    write_notebook(recipes / "cv" / "07_untitled.ipynb", [
        ("markdown", "## Only a section heading\n\nNo H1 anywhere."), ("code", "x = 1")])
    out = tmp_path / "site"
    with pytest.raises(site.SiteBuildError, match=r"recipes/cv/07_untitled\.ipynb: no title"):
        build(site, recipes, out)
    assert not out.exists()   # nothing half-built is left behind


@pytest.mark.parametrize("broken, problem", [
    ("this is not base64 !!!", "undecodable base64"),
    (base64.b64encode(b"plain text, not a PNG").decode(), "not an image"),
    (png_base64(64, 64)[:120], "truncated PNG"),
])
def test_a_broken_image_output_stops_the_build_and_is_named(site, recipes, tmp_path, broken, problem):
    write_notebook(recipes / "nlp" / "05_broken_figure.ipynb", [
        ("markdown", "# Broken figure"), ("code", "print(1)"),
        ("code", "plot()", [image_output(broken)])])
    out = tmp_path / "site"
    with pytest.raises(site.SiteBuildError) as error:
        build(site, recipes, out)
    message = str(error.value)
    assert "recipes/nlp/05_broken_figure.ipynb: cell 2 output 0" in message, problem
    assert "image/png output is not a readable image" in message, problem
    assert not out.exists()


def test_a_folder_it_did_not_write_is_not_replaced(site, recipes, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(site.SiteBuildError, match="precious: exists and is not a site"):
        build(site, recipes, out)
    assert (out / "notes.txt").read_text() == "mine"
    rebuilt = tmp_path / "site"
    build(site, recipes, rebuilt)
    build(site, recipes, rebuilt)      # its own output it replaces
    assert (rebuilt / "index.html").exists()


def test_the_repository_url_comes_from_pyproject(site):
    url = site.repository_url()
    assert url.startswith("https://") and not url.endswith("/")
    links = site.recipe_links(url, "cv/01_x.ipynb")
    assert links["source"] == f"{url}/blob/main/recipes/cv/01_x.ipynb"
    assert site.recipe_links("https://gitlab.com/a/b", "cv/01_x.ipynb")["colab"] is None


def test_the_real_recipes_are_light_on_bytes(site, tmp_path):
    """Every committed notebook renders, no page carries more than ~1 MB of images, no figure is wider
    than MAX_FIGURE_WIDTH, and cv/01 (1.5 MB of PNG in the notebook) is among them."""
    notebooks = sorted((REPOSITORY_ROOT / "recipes").rglob("*.ipynb"))
    summary = build(site, REPOSITORY_ROOT / "recipes", tmp_path / "site")
    assert summary["notebooks"] == len(notebooks)
    assert "recipes/cv/01_zero_config_classification.html" in summary["image_bytes"]
    for page, size in summary["image_bytes"].items():
        assert size < 1_000_000, f"{page}: {size} bytes of images"
    for image_path in (tmp_path / "site").rglob("*"):
        if image_path.suffix in (".png", ".jpg"):
            with Image.open(image_path) as image:
                assert image.width <= site.MAX_FIGURE_WIDTH, image_path
    index = Elements((tmp_path / "site" / "index.html").read_text())
    assert len(index.all("li", "card")) == len(notebooks)


def test_api_pages_are_found_by_walking_the_package(site):
    pages = {page["name"]: page for page in site.api_pages("kcookbook")}
    assert list(pages)[:4] == ["components", "backbones", "tasks", "presets"]
    tasks = {entry["name"]: entry for entry in pages["tasks"]["sections"][0]["entries"]}
    assert "CausalLM" in tasks and "generate" in {m["name"] for m in tasks["CausalLM"]["members"]}
    assert "<code>" in tasks["CausalLM"]["doc"]                       # ``x`` rendered as code
    assert tasks["CausalLM"]["source"] == "kcookbook/tasks/causal_lm.py"
    modules = {section["module"] for section in pages[site.MODULES_PAGE]["sections"]}
    assert "kcookbook.data" in modules
    assert Path(REPOSITORY_ROOT / "kcookbook" / "data.py").exists()


def test_a_heading_with_quotes_gets_an_id_its_anchor_link_finds(site):
    # A browser percent-decodes a link's fragment before it looks the id up, so nbconvert's
    # percent-encoded ids (id="%22a-zero%22") are never found; cv/08 has such a heading.
    rendered = str(site.markdown_html('## "a zero" … "a nine"\n\ntext'))
    ids = re.findall(r'<h2 id="([^"]*)"', rendered)
    links = re.findall(r'class="anchor-link" href="#([^"]*)"', rendered)
    assert ids == links == ["a-zero-a-nine"]
