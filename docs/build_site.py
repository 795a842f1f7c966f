"""Render the executed recipe notebooks under ``recipes/`` into a static site; nothing is executed.

    python docs/build_site.py                 # -> site/ (what `make docs` runs)
    python docs/build_site.py --out /tmp/s    # anywhere else; --no-api skips the API pages

The notebooks already hold their outputs (CI executes them), so the site is a rendering: prose, code
(syntax highlighted with pygments), outputs and figures, one page per notebook, an index with a card
per recipe, and an API page per package layer generated from the docstrings. Figures are scaled to at
most ``MAX_FIGURE_WIDTH`` pixels and photos re-encoded as JPEG, so no page carries megabytes of PNG.
Every link is relative: the pages open from disk (file://) and under any static host.

A notebook without a title (a markdown ``# H1``) or with an image output that does not decode stops
the build with a ``SiteBuildError`` naming the notebook.
"""

import argparse
import base64
import binascii
import dataclasses
import datetime
import html
import importlib
import inspect
import io
import os
import pkgutil
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import tomllib
from pathlib import Path

import jinja2
import nbformat
from markupsafe import Markup
from nbconvert.filters import ansi2html
from nbconvert.filters.markdown_mistune import markdown2html_mistune
from PIL import Image
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonConsoleLexer, PythonLexer, get_lexer_by_name
from pygments.util import ClassNotFound

DOCS = Path(__file__).resolve().parent
REPOSITORY_ROOT = DOCS.parent
TEMPLATES = DOCS / "templates"
STATIC = DOCS / "static"

MAX_FIGURE_WIDTH = 1200     # pixels; figures show at column width (at most ~900 CSS px)
THUMBNAIL_WIDTH = 480       # pixels; a card shows its thumbnail ~300 CSS px wide
JPEG_QUALITY = 85
THUMBNAIL_QUALITY = 80
PHOTO_COLOURS = 1 << 14     # an image with more distinct colours than this is a photo: JPEG, not PNG
PYGMENTS_STYLE = "default"
DEFAULT_BRANCH = "main"     # the branch "Open in Colab" and "source" links point at
SITE_MARKER = ".kcookbook-site"  # marks a folder this script wrote, so a rebuild may replace it

# Index sections, in order: a recipe's folder names its section; a file about benchmarks goes to
# "Benchmarks" whatever its folder.
SECTIONS = {"nlp": "NLP", "cv": "CV", "audio": "Audio"}
BENCHMARKS = "Benchmarks"
SECTION_ORDER = ("NLP", "CV", "Audio", BENCHMARKS)
# How the notebooks print the backend they ran on (first cell of each recipe).
BACKEND_PATTERNS = (
    re.compile(r"KERAS_BACKEND\s*=\s*(jax|tensorflow|torch)\b"),
    re.compile(r"\bKeras [0-9.]+ on (jax|tensorflow|torch)\b"),
    re.compile(r"\bbackend: (jax|tensorflow|torch)\b"),
)
# A recipe's own "Open in Colab" badge (an image on colab.research.google.com): the page's Colab button
# replaces it, so the site loads nothing from another host.
COLAB_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)[ \t]*\n?")
# API pages: these layers first, in the order imports run; any other subpackage follows.
API_LAYERS = ("components", "backbones", "tasks", "presets")
MODULES_PAGE = "modules"    # the package's top-level modules (data, plotting, ...) share one page


class SiteBuildError(Exception):
    """The site cannot be built; the message names the notebook (or module) and what to fix."""


@dataclasses.dataclass
class Image_:
    """One image written into the site."""
    filename: str
    width: int
    height: int
    size: int


@dataclasses.dataclass
class Recipe:
    source: Path            # the .ipynb, on disk
    relative: str           # its path under recipes/, e.g. "nlp/01_zero_config_finetuning.ipynb"
    section: str
    title_html: Markup
    title_text: str
    description_html: Markup
    backends: list
    wall_seconds: float | None
    cells: list             # rendered cells: dicts for the recipe template
    images: list            # Image_ written for this page
    thumbnail: Image_ | None = None

    @property
    def page(self):         # the page's path inside the site
        return "recipes/" + self.relative[:-len(".ipynb")] + ".html"

    @property
    def stem(self):
        return Path(self.relative).stem


# --------------------------------------------------------------------------------------------- text

def markdown_html(text):
    return Markup(_plain_heading_ids(markdown2html_mistune(text)))


def _plain_heading_ids(rendered):
    """Heading ids and their anchor links as plain ASCII slugs.

    nbconvert percent-encodes a heading's id (``## "a zero"`` gets ``id="%22a-zero%22"``) and links to
    it with the same encoding; a browser decodes the link's fragment before looking the id up, so
    the link to a heading with quotes or non-ASCII text finds nothing. Both sides become one slug.
    """
    def slug(encoded):
        text = urllib.parse.unquote(html.unescape(encoded)).lower()
        return re.sub(r"[^a-z0-9_]+", "-", text).strip("-") or "section"

    rendered = re.sub(r'(<h[1-6] id=")([^"]*)(")', lambda m: m[1] + slug(m[2]) + m[3], rendered)
    return re.sub(r'(<a class="anchor-link" href="#)([^"]*)(")', lambda m: m[1] + slug(m[2]) + m[3],
                  rendered)


def inline_markdown_html(text):
    """One line of markdown as inline HTML (no surrounding <p>)."""
    rendered = markdown2html_mistune(text).strip()
    rendered = re.sub(r"^<p>(.*)</p>$", r"\1", rendered, flags=re.S)
    return Markup(rendered)


def plain_text(markup):
    return html.unescape(re.sub(r"<[^>]+>", "", str(markup))).strip()


def _code_lexer():
    try:
        return get_lexer_by_name("ipython3")   # knows %magics and !shell lines
    except ClassNotFound:
        return PythonLexer()


CODE_LEXER = _code_lexer()
HTML_FORMATTER = HtmlFormatter(style=PYGMENTS_STYLE, cssclass="highlight")


TEST_MARKER = re.compile(r"^\s*# NBVAL_[A-Z_]+\s*$")   # nbval's cell markers: for CI, not readers


def code_html(source, lexer=CODE_LEXER):
    source = "\n".join(line for line in source.splitlines() if not TEST_MARKER.match(line))
    return Markup(highlight(source, lexer, HTML_FORMATTER))


def title_and_description(notebook, relative):
    """The first markdown H1 and the paragraph after it (the card's one-line description)."""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        in_fence = False
        for number, line in enumerate(lines):
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
            match = None if in_fence else re.match(r"#\s+(.+?)\s*#*\s*$", line)
            if match:
                rest = lines[number + 1:]
                paragraph = []
                for following in rest:
                    if following.strip():
                        paragraph.append(following.strip())
                    elif paragraph:
                        break
                if paragraph and paragraph[0].startswith(("#", "-", "*", "|", ">", "```")):
                    paragraph = []   # not a paragraph: a heading, list, table, quote or code
                remainder = "\n".join(lines[:number] + rest)
                return index, match.group(1), " ".join(paragraph), remainder
    raise SiteBuildError(
        f"recipes/{relative}: no title. The first markdown cell must start with a '# Title' line "
        f"(a markdown H1): the site uses it as the page title and on the index card.")


def printed_backends(notebook):
    """The Keras backends the notebook printed (in its stdout), in order; [] when it printed none."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                for pattern in BACKEND_PATTERNS:
                    for backend in pattern.findall(output.get("text", "")):
                        if backend not in found:
                            found.append(backend)
    return found


def recorded_wall_seconds(notebook):
    """Wall time of the saved run, from the executor's per-cell timestamps (``metadata.execution``).

    None unless every code cell carries them and they run forward in one go (a notebook edited and
    partly re-run by hand has no single wall time to show).
    """
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    try:
        stamps = [(cell.metadata["execution"]["iopub.execute_input"],
                   cell.metadata["execution"]["shell.execute_reply"]) for cell in code]
        spans = [(datetime.datetime.fromisoformat(start.replace("Z", "+00:00")),
                  datetime.datetime.fromisoformat(end.replace("Z", "+00:00")))
                 for start, end in stamps]
    except (KeyError, TypeError, ValueError):
        return None
    if not spans:
        return None
    for (_, end), (start, _) in zip(spans, spans[1:]):
        if not end <= start or (start - end).total_seconds() > 60:
            return None
    return (spans[-1][1] - spans[0][0]).total_seconds()


def format_seconds(seconds):
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


# ------------------------------------------------------------------------------------------- images

def decode_image(data, mime, where):
    """An output's base64 image as a loaded PIL image and its bytes; SiteBuildError names ``where``."""
    if isinstance(data, list):
        data = "".join(data)
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as error:
        raise SiteBuildError(
            f"{where}: the {mime} output is not a readable image ({error}). Re-run the notebook "
            f"or clear that output, then build again.") from error
    return image, raw


def flattened(image):
    """RGB on white (JPEG has no alpha; matplotlib figures are RGBA)."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")


def encode_image(image, raw, mime, max_width, quality=JPEG_QUALITY, photo=None):
    """Bytes and extension for the site: scaled to ``max_width``; photos as JPEG, plots as PNG.

    An image already small enough keeps its original bytes unless it is a photo stored as PNG.
    ``photo=True`` forces JPEG (thumbnails: small, and a little blur does not matter there).
    """
    scaled = image
    if image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        scaled = image.resize((max_width, height), Image.LANCZOS)
    if photo is None:
        photo = mime == "image/jpeg" or scaled.getcolors(PHOTO_COLOURS) is None
    if scaled is image and mime == "image/jpeg":
        return raw, "jpg", scaled.size
    if photo:
        buffer = io.BytesIO()
        flattened(scaled).save(buffer, "JPEG", quality=quality, optimize=True, progressive=True)
        return buffer.getvalue(), "jpg", scaled.size
    if scaled is image:
        return raw, "png", scaled.size
    buffer = io.BytesIO()
    scaled.save(buffer, "PNG", optimize=True)
    return buffer.getvalue(), "png", scaled.size


def write_bytes(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ---------------------------------------------------------------------------------------- notebooks

IMAGE_TYPES = ("image/png", "image/jpeg")
SECTION_FILE_WORDS = ("benchmark",)


def section_of(relative):
    folder, _, name = relative.partition("/")
    if any(word in name for word in SECTION_FILE_WORDS):
        return BENCHMARKS
    return SECTIONS.get(folder, folder.upper() if name else "Recipes")


def render_output(output, where, figure_dir, figure_prefix, images):
    """One output as HTML; image outputs are written under ``figure_dir`` and appended to ``images``."""
    kind = output.get("output_type")
    if kind == "stream":
        text = output.get("text", "")
        if output.get("name") == "stderr":  # mostly library logs: folded, one click away
            lines = len(text.rstrip("\n").splitlines())
            return Markup(f'<details class="output stderr"><summary>stderr ({lines} line'
                          f'{"s" if lines != 1 else ""})</summary><pre>{ansi2html(text)}</pre></details>')
        return Markup(f'<pre class="output stdout">{ansi2html(text)}</pre>')
    if kind == "error":
        traceback = "\n".join(output.get("traceback", []))
        return Markup(f'<pre class="output error">{ansi2html(traceback)}</pre>')
    data = output.get("data", {})
    for mime in IMAGE_TYPES:
        if mime in data:
            image, raw = decode_image(data[mime], mime, where)
            encoded, extension, (width, height) = encode_image(image, raw, mime, MAX_FIGURE_WIDTH)
            name = f"{figure_prefix}.{extension}"
            write_bytes(figure_dir / name, encoded)
            images.append(Image_(name, width, height, len(encoded)))
            alt = html.escape(plain_text(data.get("text/plain", "")) or "figure", quote=True)
            return Markup(f'<figure class="output"><img src="{figure_dir.name}/{name}" '
                          f'width="{width}" height="{height}" alt="{alt}"></figure>')
    if "image/svg+xml" in data:
        svg = data["image/svg+xml"]
        svg = "".join(svg) if isinstance(svg, list) else svg
        name = f"{figure_prefix}.svg"
        write_bytes(figure_dir / name, svg.encode())
        images.append(Image_(name, 0, 0, len(svg.encode())))
        return Markup(f'<figure class="output"><img src="{figure_dir.name}/{name}" alt="figure">'
                      f'</figure>')
    if "text/html" in data:
        return Markup(f'<div class="output html">{"".join(data["text/html"])}</div>')
    if "text/markdown" in data:
        return Markup(f'<div class="output markdown">{markdown_html("".join(data["text/markdown"]))}'
                      f'</div>')
    if "text/plain" in data:
        return Markup(f'<pre class="output stdout">{ansi2html("".join(data["text/plain"]))}</pre>')
    return Markup("")


def read_recipe(path, recipes_dir, out_dir):
    """Render one notebook: its cells as HTML, its figures written into the site."""
    relative = path.relative_to(recipes_dir).as_posix()
    try:
        notebook = nbformat.read(str(path), as_version=4)
    except Exception as error:  # nbformat raises several types (JSON, validation, version)
        raise SiteBuildError(f"recipes/{relative}: not a readable notebook ({error})") from error
    title_cell, title, description, title_cell_rest = title_and_description(notebook, relative)
    figure_dir = out_dir / "recipes" / Path(relative).parent / Path(relative).stem
    images, cells = [], []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            source = COLAB_BADGE.sub("", title_cell_rest if index == title_cell else cell.source)
            if source.strip():
                cells.append({"kind": "markdown", "html": markdown_html(source)})
        elif cell.cell_type == "code":
            outputs = []
            for number, output in enumerate(cell.get("outputs", [])):
                where = f"recipes/{relative}: cell {index} output {number}"
                rendered = render_output(output, where, figure_dir, f"cell{index:02d}-{number}", images)
                if rendered:
                    outputs.append(rendered)
            if cell.source.strip() or outputs:
                cells.append({"kind": "code", "html": code_html(cell.source) if cell.source.strip()
                              else Markup(""), "outputs": outputs})
    return Recipe(
        source=path, relative=relative, section=section_of(relative),
        title_html=inline_markdown_html(title), title_text=plain_text(inline_markdown_html(title)),
        description_html=inline_markdown_html(description) if description else Markup(""),
        backends=printed_backends(notebook), wall_seconds=recorded_wall_seconds(notebook),
        cells=cells, images=images)


def first_image(recipe, out_dir):
    """The recipe's first figure, as a thumbnail under site/thumbnails/."""
    if not recipe.images or recipe.images[0].filename.endswith(".svg"):
        return None
    figure = (out_dir / recipe.page).parent / recipe.stem / recipe.images[0].filename
    with Image.open(figure) as image:
        image.load()
        mime = "image/jpeg" if figure.suffix == ".jpg" else "image/png"
        encoded, extension, (width, height) = encode_image(
            image, figure.read_bytes(), mime, THUMBNAIL_WIDTH, quality=THUMBNAIL_QUALITY, photo=True)
    name = f"{recipe.relative[:-len('.ipynb')].replace('/', '-')}.{extension}"
    write_bytes(out_dir / "thumbnails" / name, encoded)
    return Image_(f"thumbnails/{name}", width, height, len(encoded))


# -------------------------------------------------------------------------------------------- links

def repository_url(pyproject=REPOSITORY_ROOT / "pyproject.toml"):
    """``[project.urls] Repository`` from pyproject.toml: the one place the repository URL lives."""
    with open(pyproject, "rb") as f:
        urls = tomllib.load(f).get("project", {}).get("urls", {})
    url = urls.get("Repository") or urls.get("Source")
    if not url:
        raise SiteBuildError(f"{pyproject}: no [project.urls] Repository; the site's 'Open in "
                             f"Colab' and source links are built from it. Add one.")
    return url.rstrip("/")


def recipe_links(repository, relative, branch=DEFAULT_BRANCH):
    """Colab and source URLs of recipes/<relative> on GitHub (no Colab link for other hosts)."""
    path = f"recipes/{relative}"
    links = {"source": f"{repository}/blob/{branch}/{path}", "colab": None}
    match = re.match(r"https?://github\.com/([^/]+/[^/]+?)(?:\.git)?$", repository)
    if match:
        links["colab"] = f"https://colab.research.google.com/github/{match.group(1)}/blob/{branch}/{path}"
    return links


# ---------------------------------------------------------------------------------------------- API

def _rst_to_markdown(doc):
    """The docstrings' reStructuredText habits as markdown: ``code``, >>> examples, Args: sections."""
    lines = inspect.cleandoc(doc).splitlines()
    out, index = [], 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if stripped.startswith(">>>"):                      # a doctest block, up to a blank line
            block = []
            while index < len(lines) and lines[index].strip():
                block.append(lines[index].strip() if lines[index].strip().startswith((">>>", "..."))
                             else lines[index].strip())
                index += 1
            out += ["", "~~~pycon", *block, "~~~", ""]
            continue
        if re.fullmatch(r"=+(\s+=+)+", stripped):         # an RST simple table: keep it as text
            block = []
            while index < len(lines) and lines[index].strip():
                block.append(lines[index])
                index += 1
            out += ["", "~~~text", *block, "~~~", ""]
            continue
        if re.fullmatch(r"(Args|Arguments|Returns|Yields|Raises|Attributes|Example|Examples"
                        r"|Note|Notes):", stripped) and not line.startswith(" "):
            out += ["", f"**{stripped[:-1]}**", ""]
            index += 1
            while index < len(lines) and (not lines[index].strip() or lines[index].startswith(" ")):
                entry = lines[index].strip()
                if entry and re.match(r"^\**[A-Za-z_][\w, *]*(\s*\([^)]*\))?:\s", entry + " ") \
                        and len(lines[index]) - len(lines[index].lstrip()) <= 4:
                    name, _, text = entry.partition(":")
                    out.append(f"- `{name.strip()}`: {text.strip()}")
                elif entry:
                    out[-1] = out[-1] + " " + entry if out and out[-1].startswith("- ") else entry
                index += 1
            out.append("")
            continue
        out.append(line)
        index += 1
    text = "\n".join(out)
    return re.sub(r"``([^`]+?)``", r"`\1`", text)


def docstring_html(obj):
    doc = inspect.getdoc(obj)
    return markdown_html(_rst_to_markdown(doc)) if doc else Markup("")


def _signature(obj, method=False):
    """``(a, b=1)``; a method's ``self`` (or a classmethod's ``cls``) left out, as one calls it."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    if method and signature.parameters:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    return str(signature)


def _source_path(obj, package):
    """The file defining ``obj``, relative to the repository (``kcookbook/tasks/causal_lm.py``)."""
    try:
        path = Path(inspect.getsourcefile(obj)).resolve()
        root = Path(importlib.import_module(package).__file__).resolve().parent.parent
        return path.relative_to(root).as_posix()
    except (TypeError, ValueError):
        return None


def _defined_here(obj, package):
    return getattr(obj, "__module__", "").split(".")[0] == package


def api_entry(name, obj, package):
    entry = {"name": name, "kind": "class" if inspect.isclass(obj) else "function",
             "signature": _signature(obj), "doc": docstring_html(obj), "members": [],
             "module": obj.__module__, "source": _source_path(obj, package), "bases": []}
    if inspect.isclass(obj):
        entry["bases"] = [base.__name__ for base in obj.__bases__ if base is not object]
        for member_name, member in vars(obj).items():
            if member_name.startswith("_"):
                continue
            target = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if isinstance(member, property):
                target = member.fget
            if not (inspect.isfunction(target) and inspect.getdoc(target)):
                continue
            entry["members"].append({
                "name": member_name, "signature": "" if isinstance(member, property)
                else _signature(target, method=not isinstance(member, staticmethod)),
                "doc": docstring_html(target),
                "kind": "property" if isinstance(member, property) else
                "classmethod" if isinstance(member, classmethod) else "method"})
    return entry


def public_objects(module, package):
    """(name, object) for the module's public classes and functions: its __all__ when it has one,
    else what it defines (not what it imports)."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name, obj in vars(module).items() if not name.startswith("_")
                 and (inspect.isclass(obj) or inspect.isfunction(obj))
                 and getattr(obj, "__module__", None) == module.__name__]
    objects = []
    for name in names:
        obj = getattr(module, name, None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and _defined_here(obj, package):
            objects.append((name, obj))
    return sorted(objects, key=lambda item: (not inspect.isclass(item[1]), item[0].lower()))


def _import(name):
    try:
        return importlib.import_module(name)
    except Exception as error:
        raise SiteBuildError(f"module {name}: cannot be imported for the API pages ({error!r})") \
            from error


def api_pages(package_name="kcookbook"):
    """One page per subpackage (layer) and one for the top-level modules, discovered by walking
    the package, so a module that moves or a new layer shows up without editing this script."""
    package = _import(package_name)
    layers, modules = [], []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            (layers if info.ispkg else modules).append(info.name)
    layers.sort(key=lambda name: (API_LAYERS.index(name) if name in API_LAYERS else len(API_LAYERS),
                                  name))
    pages = []
    for layer in layers:
        top = _import(f"{package_name}.{layer}")
        sections = [{"module": top.__name__, "doc": docstring_html(top),
                     "entries": [api_entry(n, o, package_name) for n, o in public_objects(top, package_name)]}]
        for info in pkgutil.walk_packages(top.__path__, prefix=f"{top.__name__}."):
            if info.ispkg and not any(part.startswith("_") for part in info.name.split(".")):
                sub = _import(info.name)
                entries = [api_entry(n, o, package_name) for n, o in public_objects(sub, package_name)
                           if getattr(sub, "__all__", None) is not None or inspect.getdoc(o)]
                sections.append({"module": sub.__name__, "doc": docstring_html(sub), "entries": entries})
        pages.append({"name": layer, "title": f"{package_name}.{layer}", "sections": sections})
    if modules:
        sections = []
        for name in sorted(modules):
            module = _import(f"{package_name}.{name}")
            sections.append({"module": module.__name__, "doc": docstring_html(module),
                             "entries": [api_entry(n, o, package_name)
                                         for n, o in public_objects(module, package_name)]})
        pages.append({"name": MODULES_PAGE, "title": f"{package_name}: other modules",
                      "sections": sections})
    return pages


# -------------------------------------------------------------------------------------------- build

def _environment():
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                     autoescape=jinja2.select_autoescape(["html"]),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    environment.filters["duration"] = format_seconds
    # A card is one link: links inside its title or description would nest <a> in <a>.
    environment.filters["striptags_links"] = lambda markup: Markup(
        re.sub(r"</?a\b[^>]*>", "", str(markup)))
    return environment


def _prepare_output(out_dir):
    """A fresh folder to build into; refuses to replace a non-empty folder this script did not write."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / SITE_MARKER).exists():
        raise SiteBuildError(f"{out_dir}: exists and is not a site built by docs/build_site.py (no "
                             f"{SITE_MARKER}); choose another --out or empty it.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the site from a web server's user
    return staging


def build_site(recipes_dir, out_dir, repository=None, api_package="kcookbook"):
    """Render every notebook under ``recipes_dir`` into ``out_dir``; returns a summary dict.

    ``repository``: the repository URL the Colab and source links point at (default: pyproject's
    ``[project.urls] Repository``). ``api_package=None`` skips the API pages (no import).
    The site appears at ``out_dir`` only when the whole build succeeded.
    """
    started = time.perf_counter()
    recipes_dir, out_dir = Path(recipes_dir).resolve(), Path(out_dir).resolve()
    notebooks = sorted(p for p in recipes_dir.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not notebooks:
        raise SiteBuildError(f"{recipes_dir}: no notebooks (*.ipynb) to render")
    repository = (repository or repository_url()).rstrip("/")
    staging = _prepare_output(out_dir)
    try:
        recipes = [read_recipe(path, recipes_dir, staging) for path in notebooks]
        for recipe in recipes:
            recipe.thumbnail = first_image(recipe, staging)
            shutil.copy2(recipe.source, staging / recipe.page.replace(".html", ".ipynb"))
        api = api_pages(api_package) if api_package else []
        environment = _environment()
        sections = [(name, [r for r in recipes if r.section == name])
                    for name in list(SECTION_ORDER) + sorted({r.section for r in recipes}
                                                             - set(SECTION_ORDER))]
        sections = [(name, members) for name, members in sections if members]
        common = {"api_pages": api, "sections": sections, "repository": repository,
                  "branch": DEFAULT_BRANCH}
        _write_page(environment, "index.html", staging, "index.html", common)
        ordered = [recipe for _, members in sections for recipe in members]
        for number, recipe in enumerate(ordered):
            _write_page(environment, "recipe.html", staging, recipe.page, dict(
                common, recipe=recipe, links=recipe_links(repository, recipe.relative),
                previous=ordered[number - 1] if number else None,
                next=ordered[number + 1] if number + 1 < len(ordered) else None))
        for page in api:
            _write_page(environment, "api.html", staging, f"api/{page['name']}.html",
                        dict(common, page=page))
        (staging / "static").mkdir()
        for asset in STATIC.iterdir():
            shutil.copy2(asset, staging / "static" / asset.name)
        (staging / "static" / "pygments.css").write_text(HTML_FORMATTER.get_style_defs(".highlight"))
        (staging / SITE_MARKER).write_text("built by docs/build_site.py; safe to delete\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pages = {recipe.page: sum(image.size for image in recipe.images) for recipe in recipes}
    pages["index.html"] = sum(r.thumbnail.size for r in recipes if r.thumbnail)
    return {"notebooks": len(recipes), "api_pages": len(api), "seconds": time.perf_counter() - started,
            "image_bytes": pages, "out": out_dir}


def _write_page(environment, template, staging, page, context):
    """Render ``template`` to ``staging/page``; ``root`` is the relative way back to the site's top."""
    text = environment.get_template(template).render(root="../" * page.count("/"), current=page,
                                                     **context)
    path = staging / page
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=REPOSITORY_ROOT / "recipes", type=Path)
    parser.add_argument("--out", default=REPOSITORY_ROOT / "site", type=Path)
    parser.add_argument("--no-api", action="store_true", help="skip the API pages (no import)")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPOSITORY_ROOT))  # this checkout's kcookbook, not another install's
    try:
        summary = build_site(args.recipes, args.out, api_package=None if args.no_api else "kcookbook")
    except SiteBuildError as error:
        print(f"build_site: {error}", file=sys.stderr)
        return 1
    heaviest = max(summary["image_bytes"].items(), key=lambda item: item[1])
    print(f"{summary['notebooks']} recipes and {summary['api_pages']} API pages in "
          f"{summary['seconds']:.1f} s -> {summary['out']} (heaviest page: {heaviest[0]}, "
          f"{heaviest[1] / 1e3:.0f} kB of images). Open it: python -m http.server -d {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
