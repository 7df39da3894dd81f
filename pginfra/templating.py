"""Render the Jinja2 templates in templates/ the same way for deploys and for tests.

    >>> text = render("pg_hba.conf.j2", path="/etc/postgresql/15/main/pg_hba.conf", rules=[])
"""

from __future__ import annotations

from io import StringIO

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pginfra import ROOT

_ENV = Environment(
    loader=FileSystemLoader(str(ROOT / "templates")),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def render(name: str, **context) -> str:
    return _ENV.get_template(name).render(**context)


def render_io(name: str, **context) -> StringIO:
    """The rendered template as a file object for ``files.put``."""
    return StringIO(render(name, **context))
