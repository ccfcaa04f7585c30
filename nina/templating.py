"""The one way nina loads templates: Jinja2 from `nina/templates/<subdir>`, strict about
undefined names, no autoescaping (nothing here is HTML), trailing newlines kept, `facts` global."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from nina import facts

TEMPLATES = Path(__file__).parent / "templates"


def environment(subdir: str = "", **options: Any) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES / subdir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        **options,
    )
    env.globals["facts"] = facts
    return env
