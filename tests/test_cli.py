"""The command line (`splitlib`, `python -m splitlib`) and what it says when something is missing."""
from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import tomllib
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import tiny_model

from splitlib import build, cli, data
from splitlib.data import load_task
from splitlib.models import ModelUnavailableError, embedded_model_dir, load_model
from splitlib.profiles import PROFILES, get_profile

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty data folder: the real files are absent and nothing is downloaded."""
    folder = tmp_path / "no-data"
    folder.mkdir()
    monkeypatch.setenv("SPLITLIB_DATA", str(folder))
    return folder


# ----- profiles -----------------------------------------------------------------------------------------
def test_profiles_lists_the_built_ins(capsys):
    assert cli.main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name, profile in PROFILES.items():
        assert name in out and profile.model in out


def test_profiles_show_prints_every_field_as_a_profile_file(capsys, tmp_path):
    assert cli.main(["profiles", "show", "gemma-2-9b-it"]) == 0
    shown = capsys.readouterr().out
    fields = tomllib.loads(shown)
    assert fields["inherit"] == "gemma-2-9b-it" and fields["layer"] == 20 and fields["cell_timeout"] == 7200
    assert fields["split_configs"]["axbench"]["vector"]["epochs"] == 18
    (tmp_path / "g.toml").write_text(shown)
    assert get_profile(str(tmp_path / "g.toml")) == replace(PROFILES["gemma-2-9b-it"], name="g")


def test_profiles_show_names_the_bad_file_and_field(capsys, tmp_path):
    (tmp_path / "bad.toml").write_text("[engine]\npad_to = 'wide'\n")
    assert cli.main(["profiles", "show", str(tmp_path / "bad.toml")]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "bad.toml") in error and "field 'engine.pad_to' must be an integer" in error


def test_build_prints_the_profiles_timeout_and_folders(capsys, tmp_path):
    (tmp_path / "long.toml").write_text("cell_timeout = 3600\n")
    for step, profile, expected in [("timeout", "cpu", "1800"), ("timeout", "qwen2.5-7b-it", "7200"),
                                    ("timeout", str(tmp_path / "long.toml"), "3600"),
                                    ("notebook-dir", str(tmp_path / "long.toml"), "_notebooks/long"),
                                    ("html-dir", "cpu", "_build/html"), ("html-dir", "gemma-2-9b-it",
                                                                         "_build/html-gemma-2-9b-it")]:
        assert build.main([step, "--profile", profile]) == 0
        assert capsys.readouterr().out.strip() == expected


# ----- chapters -----------------------------------------------------------------------------------------
def test_a_chapter_runs_cell_by_cell_into_a_stamped_notebook(tiny_profile, tmp_path, monkeypatch, capsys):
    """Executes chapter 1 on a tiny random model through a profile file (the cpu profile's run is
    what `make test` does with every chapter)."""
    env = {**os.environ, "SPLITLIB_PROFILE": tiny_profile}
    out = tmp_path / "notebooks"
    result = subprocess.run([sys.executable, "-m", "splitlib", "chapter", "01-unified-view", "--out", str(out)],
                            env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    notebook = nbformat.read(out / "01-unified-view.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    assert f"cell 1/{len(code)} done in" in result.stdout and f"cell {len(code)}/{len(code)} done in" in result.stdout
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    chapter = ROOT / "book" / "01-unified-view.md"
    monkeypatch.setenv("SPLITLIB_PROFILE", tiny_profile)
    assert notebook.metadata["splitlib"]["key"] == build.execution_key(chapter, tiny_profile)  # what `make book` stamps
    assert cli.main(["chapter", "01", "--out", str(out)]) == 0  # a second run finds it up to date
    assert "is up to date" in capsys.readouterr().out


def test_the_kernel_runs_in_the_notebooks_folder_with_the_profile_files_absolute_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.toml").write_text("layer = 2\n")
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "run" / "probe.ipynb"
    target.parent.mkdir()
    cell = "import os, splitlib\nprint(os.getcwd(), os.environ['SPLITLIB_PROFILE'], splitlib.get_profile().layer)"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                     "language": "python"}}), target)
    assert cli.execute_notebook(target, 120, cli.kernel_env("mine.toml"))
    outputs = nbformat.read(target, as_version=4).cells[0].outputs
    assert outputs[0].text.split() == [str(target.parent), str(tmp_path / "mine.toml"), "2"]
    assert "cell 1/1 done in" in capsys.readouterr().out


def test_an_unknown_chapter_lists_the_chapters(capsys):
    assert cli.main(["chapter", "99"]) == 2
    assert "no chapter matches '99'; the chapters are 01-unified-view" in capsys.readouterr().err


# ----- train, sweep, fit ----------------------------------------------------------------------------------
@pytest.fixture
def tiny_profile(tmp_path, no_data, monkeypatch):
    """A profile file for a tiny random model in a local folder, with small splits (bundled data)."""
    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=49152).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_bytes((embedded_model_dir() / name).read_bytes())
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.toml"
    path.write_text(f'model = "{folder}"\nlayer = 1\n[splits.psychopathy]\ntrain = 8\ntest = 4\n'
                    "[split_configs.psychopathy.vector]\nepochs = 1\n")
    return str(path)


def test_train_sweep_and_fit_from_the_command_line(tiny_profile, tmp_path, capsys):
    task = ["--task", "psychopathy", "--method", "split", "--form", "vector", "--profile", tiny_profile]
    with pytest.warns(UserWarning, match="real data unavailable"):
        assert cli.main(["train", *task]) == 0
    out = capsys.readouterr().out
    folder = Path(out.split("in the cache at ")[1].strip())
    assert folder.is_relative_to(tmp_path / "cache" / "interventions") and (folder / "intervention.json").is_file()

    table = tmp_path / "sweep.csv"
    with pytest.warns(UserWarning, match="real data unavailable"):
        assert cli.main(["sweep", *task, "--out", str(table), "--multipliers=-8,-4,-2,0,2,4,8,12,16,20"]) == 0
    assert "40 rows (10 multipliers x 4 pairs)" in capsys.readouterr().out

    assert cli.main(["fit", str(table)]) == 0
    out = capsys.readouterr().out
    assert "preference (task=psychopathy, method=split, form=vector, split=test, loss=sum; 10 multipliers)" in out
    assert "utility (" in out and "beta_u = " in out


def test_fit_prints_shape_flags_and_boundaries_beyond_the_grid(tmp_path, monkeypatch, capsys):
    import numpy as np
    import pandas as pd

    from splitlib import fit

    grid = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    spiky = fit.Fit("utility", {"beta_u": 1.0}, 0.9, grid, grid, warnings=["spike between m = 1 and 2"],
                    derived={"linear_end_pos": 1.5, "convergence_start_pos": 40.0})
    monkeypatch.setattr(fit, "fit_preference", lambda m, y, seed=0: spiky)
    monkeypatch.setattr(fit, "fit_utility", lambda m, y, seed=0: spiky)
    table = tmp_path / "sweep.csv"
    pd.DataFrame({"m": grid, "pref_odds": grid, "util_odds": -grid**2}).to_csv(table, index=False)
    assert cli.main(["fit", str(table)]) == 0
    out = capsys.readouterr().out
    assert "flagged shape: spike between m = 1 and 2" in out
    assert "convergence_start_pos = 40 (beyond the grid)" in out and "linear_end_pos = 1.5," in out


def test_a_sweep_file_must_be_a_table(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "results.txt"])
    assert "a .csv or a .parquet file" in capsys.readouterr().err


# ----- offline, honestly ----------------------------------------------------------------------------------
def test_a_cuda_profile_without_a_gpu_stops_at_once(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be fetched before the device is checked")

    monkeypatch.setattr(data, "real_file", no_download)
    for argv in (["chapter", "01", "--profile", "gemma-2-9b-it"],
                 ["train", "--task", "psychopathy", "--profile", "qwen2.5-7b-it"]):
        assert cli.main(argv) == 2
        error = capsys.readouterr().err
        assert "is set to run on cuda, but this machine has no CUDA device" in error
        assert "use the cpu profile (SPLITLIB_PROFILE=cpu)" in error
    assert build.main(["prepare", "--profile", "gemma-2-9b-it"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.fixture
def empty_mirror(tmp_path, monkeypatch):
    """A real HTTP server on loopback that has none of the files (every download is a 404)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("SPLITLIB_DATA", raising=False)
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("SPLITLIB_DATA_MIRROR", url)
    yield url
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_a_failed_download_says_why_before_falling_back(empty_mirror, capsys):
    failed = f"downloading {empty_mirror}/anthropic-evals/persona/psychopathy.jsonl failed: HTTP 404"
    with pytest.warns(UserWarning, match=f"{failed}.*using the bundled set data/statements.jsonl"):
        task = load_task("psychopathy", get_profile("cpu"))
    assert "bundled" in task.origin and failed in task.notes[0]
    build.fetch_data(get_profile("cpu"))  # what `make book` and `splitlib chapter` do first
    error = capsys.readouterr().err
    assert failed in error and "the chapters use the bundled sets" in error


def test_a_paper_profile_without_data_stops_with_both_ways_to_get_it(empty_mirror):
    for stop in (lambda: build.fetch_data(get_profile("qwen2.5-7b-it")),
                 lambda: load_task("psychopathy", get_profile("qwen2.5-7b-it"))):
        with pytest.raises(FileNotFoundError) as error:
            stop()
        message = str(error.value)
        assert "paper's sizes" in message and "HTTP 404" in message
        assert "point $SPLITLIB_DATA at a folder" in message and "let splitlib download it" in message


def test_a_model_that_cannot_be_fetched_says_how_to_get_it(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, as HF_HUB_OFFLINE=1 does
    with pytest.raises(ModelUnavailableError) as error:
        load_model(replace(PROFILES["qwen2.5-7b-it"], model="no-such-org/no-such-model", device="cpu"))
    message = str(error.value)
    assert "cannot load the model 'no-such-org/no-such-model'" in message and "HF_HUB_OFFLINE=1" in message
    assert 'inherit = "qwen2.5-7b-it"' in message and 'model = "/path/to/folder"' in message


def test_loading_hides_the_per_tensor_bar_but_keeps_download_bars():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from splitlib.models import _download_bars_only

    hf_logging.enable_progress_bar()
    with _download_bars_only():
        assert not hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()


def test_export_writes_a_control_vector_that_reads_back(tiny_profile, tmp_path, capsys):
    from splitlib.interop import read_gguf

    task = ["--task", "psychopathy", "--method", "split", "--form", "vector", "--profile", tiny_profile]
    out = tmp_path / "vector.gguf"
    with pytest.warns(UserWarning, match="real data unavailable"):
        assert cli.main(["export", *task, "--format", "gguf", "--out", str(out), "--multiplier", "2"]) == 0
    assert "as gguf" in capsys.readouterr().out
    directions, fields = read_gguf(out)
    assert list(directions) == [1] and fields["general.architecture"] == "controlvector"
