"""The book's figure functions hand back closed figures, so a chapter shows each figure once (via glue)."""
from __future__ import annotations

import ast
import io
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from splitlib import plots


def test_every_function_returning_a_figure_closes_it_first():
    tree = ast.parse(Path(plots.__file__).read_text())
    functions = [f for f in tree.body if isinstance(f, ast.FunctionDef) and ast.unparse(f.returns) == "Figure"]
    assert len(functions) >= 10
    for function in functions:
        *_, close, done = function.body
        assert ast.unparse(done) == "return fig", function.name
        assert ast.unparse(close) == "plt.close(fig)", f"{function.name} returns its figure open"


def test_a_closed_figure_still_renders_for_glue():
    plt.close("all")
    summary = pd.DataFrame({"m": [0.0, 1.0, 2.0], "split": "test", "accuracy": [0.5, 0.6, 0.7],
                            "accuracy_low": [0.4, 0.5, 0.6], "accuracy_high": [0.6, 0.7, 0.8]})
    fig = plots.accuracy_curve(summary)
    assert plt.get_fignums() == []  # nothing left for the inline backend to show at the cell's end
    png = io.BytesIO()
    fig.savefig(png, format="png")  # what glue's formatter does with it
    assert png.getvalue().startswith(b"\x89PNG") and len(png.getvalue()) > 5000
