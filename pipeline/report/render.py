"""HTML pages from the Jinja templates in ``templates/`` (one stylesheet, one page frame, one table macro).

The pages are self-contained: the stylesheet is inlined and a Content-Security-Policy forbids any
resource but ``data:`` images, so a report opens offline and from an e-mail attachment.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).parent / "templates"


def inline(text: str) -> Markup:
    """A sentence written for Markdown, for HTML: escaped; its backquoted code and ``**bold**`` become tags."""
    out = str(escape(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return Markup(out)


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


_ENV = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters.update(inline=inline, svg_data_uri=svg_data_uri)


def page(template: str, **context) -> str:
    """Render ``templates/<template>`` (a page extending ``base.html.j2``: needs ``title``)."""
    return _ENV.get_template(template).render(**context)
