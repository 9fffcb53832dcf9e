"""What only the chapters need: the run box at the top of a page and tables in one style.

The computations live in the other modules; this one shapes their results for the page, so a
chapter shows the calls a reader would write and not the formatting around them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .profiles import Profile

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

    from .models import ModelInfo

# One number format for the book's tables, unless a column asks for another.
DEFAULT_FORMAT = "{:.3g}"


def run_box(profile: Profile, model_info: ModelInfo, data: str) -> object:
    """The box at the top of every chapter: what rendered it and how to re-run it at paper scale.

    Returned as MyST Markdown, which the book renders as an admonition.
    """
    from IPython.display import Markdown

    scale = "the paper's setup" if profile.paper_setup else "a small model at CI sizes: shapes, not magnitudes"
    return Markdown(
        "```{admonition} How this page was rendered\n"
        ":class: note\n\n"
        f"- **Profile:** `{profile.name}`: {profile.description}\n"
        f"- **Model:** `{profile.model}` ({model_info.architecture}, {model_info.n_layers} layers, "
        f"hidden size {model_info.hidden_size}, {model_info.n_parameters / 1e6:.1f} M parameters, "
        f"{model_info.dtype} on {model_info.device})\n"
        f"- **Intervention layer:** {profile.layer}\n"
        f"- **Data:** {data}\n"
        f"- **Scale:** {scale}\n\n"
        f"To re-run at paper scale: {profile.rerun_hint()}\n"
        "```"
    )


def table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> Styler:
    """`frame` for the page: no index column, numbers in the book's format (or the column's own
    from `formats`), text left as it is."""
    numeric = [c for c in frame.columns if frame[c].dtype.kind in "fc"]
    chosen = {column: DEFAULT_FORMAT for column in numeric} | dict(formats or {})
    return frame.style.format({c: f for c, f in chosen.items() if c in frame.columns}).hide(axis="index")
