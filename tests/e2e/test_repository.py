"""The repository's promises: one set of pins, two commands, stripped notebooks, book config."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest
import yaml

from prrt.profiles import PROFILES, get_profile

REPO = Path(__file__).resolve().parents[2]


def requirement_pins() -> dict:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_environment_yml_has_the_same_pins_as_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {p.split("==")[0].lower(): p.split("==")[1] for p in pip if "==" in p}
    assert pins == requirement_pins()
    assert "python=3.11" in env["dependencies"]


def test_every_requirement_is_pinned_exactly_and_torch_comes_first():
    pins = requirement_pins()
    assert pins["torch"] == "2.13.0"
    assert pins["jupyter-book"].startswith("1.")
    makefile = (REPO / "Makefile").read_text()
    torch_line = makefile.index("grep -E '^torch==' requirements.txt")
    assert torch_line < makefile.index("-r requirements.txt")


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    assert "make book" in first_block and "make test" in first_block


def test_book_config():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"  # a string, not YAML's false
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for f in [toc["root"], *files]:
        assert any((REPO / f"{f}{ext}").is_file() for ext in (".md", ".ipynb")), f
    notebooks = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [f"notebooks/{n}" for n in notebooks] == [f for f in files if f.startswith("notebooks/")]


def test_notebooks_are_stripped_and_parameterised():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        for c in code:
            assert c.outputs == [] and c.execution_count is None, f"{path.name}: outputs not stripped"
        first = code[0]
        assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell not tagged"
        names = set(re.findall(r"^(\w+)\s*=", first.source, re.M))
        assert {"manifest", "run_dir", "profile", "seed"} <= names, path.name
        assert nb.metadata["kernelspec"]["name"] == "python3"
        # papermill reads every parameter with its comment (`papermill --help-notebook`; a comment that holds
        # an equals sign hides the parameter from it)
        import papermill

        found = papermill.inspect_notebook(str(path))
        assert set(found) == names and all(p["help"] for p in found.values()), path.name


def test_profiles_are_defined_in_one_place():
    assert set(PROFILES) == {"smoke", "demo", "paper"}
    smoke, demo, paper = (get_profile(n) for n in ("smoke", "demo", "paper"))
    assert all(p.n_folds == 3 for p in (smoke, demo, paper))  # as in the study
    assert paper.n_repeats >= 10
    assert smoke.epochs < demo.epochs < paper.epochs
    # the demo and paper profiles feed liver-centred inputs of one spacing; paper at 2-3 mm voxels
    assert demo.roi == paper.roi == "liver"
    assert demo.voxel_spacing_mm == (demo.roi_spacing_mm,) * 3
    assert 2.0 <= paper.roi_spacing_mm <= 3.0
    body = replace(demo, roi="body")
    assert abs(body.voxel_spacing_mm[0] - body.field_of_view_mm[0] / body.input_size_voxels[0]) < 1e-9
    json.dumps(paper.to_dict())
    try:
        get_profile("fast")
    except ValueError as exc:
        assert "smoke" in str(exc)
    else:
        raise AssertionError("unknown profile accepted")


def test_real_ct_ships_with_its_attribution():
    readme = (REPO / "tests" / "fixtures" / "README.md").read_text()
    assert "example_ct.nii.gz" in readme and "TotalSegmentator" in readme and "Wasserthal" in readme


def test_every_pinned_package_is_used_and_documented():
    """Each pin is imported by the code or run as a program by it, as the README's table says."""
    pins = requirement_pins()
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Dependencies", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("package", "---") and not set(cells[0]) <= {"-"}:
            rows[cells[0].lower()] = cells[1]
    assert set(rows) == set(pins), f"README table and requirements.txt differ: {set(rows) ^ set(pins)}"
    code = "\n".join(p.read_text() for d in ("prrt", "tests", "benchmarks") for p in (REPO / d).rglob("*.py"))
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        code += "\n".join(c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")
    invoked = (REPO / "Makefile").read_text() + "".join(p.read_text() for p in sorted((REPO / "prrt" / "runner").glob("*.py")))
    for package, how in rows.items():
        if how.startswith("program:"):
            program = re.search(r"`([^`]+)`", how).group(1)
            needle = {"python3": 'kernel_name="python3"', "jupyter lab": "jupyter lab",
                      "pytest": "pytest"}.get(program, program)
            assert needle in invoked, f"{package}: {program!r} is not run by the Makefile or prrt.runner"
        else:
            module = how.strip("`")
            assert re.search(rf"^\s*(import|from)\s+{re.escape(module)}(\.|\s|$)", code, re.M), \
                f"{package} is pinned, but nothing imports {module}"


# ---- publishing and Binder ------------------------------------------------------------------------
PINNED_ACTION = re.compile(r"[\w.-]+/[\w.-]+@(v\d+\.\d+\.\d+|[0-9a-f]{40})")


def _workflow(name: str) -> tuple[dict, dict]:
    doc = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    return doc, doc.get("on", doc.get(True))  # YAML 1.1 reads the key `on` as True


def _steps(doc: dict) -> list[dict]:
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def test_the_workflows_publish_the_book_and_run_the_tests_with_the_readmes_commands():
    readme_block = re.search(r"```(?:bash|sh)?\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    book, on = _workflow("book.yml")
    assert on["push"]["branches"] == ["main"]
    assert book["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    runs = [s.get("run", "").strip() for s in _steps(book)]
    assert "make book" in runs and "make book" in readme_block
    uses = {s["uses"].split("@")[0]: s for s in _steps(book) if "uses" in s}
    # the Makefile's default run folder is runs/demo: that is what gets published
    assert "RUN_DIR ?= runs/$(PROFILE)" in (REPO / "Makefile").read_text() and "PROFILE ?= demo" in (REPO / "Makefile").read_text()
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "runs/demo/book"
    assert "actions/deploy-pages" in uses and book["jobs"]["deploy"]["needs"] == "build"
    cached = {s["with"]["path"] for s in _steps(book) if s.get("uses", "").startswith("actions/cache@")}
    assert cached == {".venv", "runs/.prrt-cache"}
    assert book["env"]["PRRT_BROWSER_CHECK"] == "required"  # the published book was opened in a browser
    tests, on = _workflow("tests.yml")
    assert "push" in on and "pull_request" in on
    assert "make test" in [s.get("run", "").strip() for s in _steps(tests)] and "make test" in readme_block
    for name in ("book.yml", "tests.yml"):
        for step in _steps(_workflow(name)[0]):
            if "uses" in step:
                assert PINNED_ACTION.fullmatch(step["uses"]), f"{name}: {step['uses']} is not pinned to a version"


def test_binder_gets_launch_buttons_and_the_environment():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["launch_buttons"] == {"binderhub_url": "https://mybinder.org", "notebook_interface": "jupyterlab"}
    assert config["repository"]["branch"] == "main"
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert "-e ." in pip  # the package; postBuild then makes the demo cohort
    assert (REPO / "postBuild").stat().st_mode & 0o111
    assert "lab: venv demo-data" in (REPO / "Makefile").read_text()  # make lab: JupyterLab with the demo cohort


def test_launch_buttons_link_to_binder_when_the_repository_is_known(monkeypatch):
    from prrt.provenance import repository_url

    monkeypatch.delenv("PRRT_REPOSITORY_URL", raising=False)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    assert repository_url() is None  # then the book has no launch buttons (the theme needs an address)
    monkeypatch.setenv("GITHUB_REPOSITORY", "someone/prrt")
    assert repository_url() == "https://github.com/someone/prrt"
    monkeypatch.setenv("PRRT_REPOSITORY_URL", "https://gitlab.example/x/prrt")
    assert repository_url() == "https://gitlab.example/x/prrt"


@pytest.mark.slow
def test_binder_postbuild_makes_the_cohort_the_notebooks_read(tmp_path):
    """The steps of a Binder build that do not need conda, in a fresh venv: the package installed as
    environment.yml installs it (`-e .`), then postBuild (a small cohort here, PRRT_DEMO_ARGS)."""
    import os
    import shutil
    import subprocess
    import sys
    import sysconfig

    repo = tmp_path / "repo"
    for name in ("prrt", "data_manifest", "pyproject.toml", "README.md", "postBuild"):
        src = REPO / name
        (shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy2(src, repo / name))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # the dependencies come from the test environment (conda's part of a Binder build)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(repo)],
                   check=True, cwd=repo)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
           "PRRT_DEMO_ARGS": "--n-patients 24 --geometry small --pretrain-ct 2"}
    subprocess.run([str(repo / "postBuild")], check=True, env=env, cwd=tmp_path, capture_output=True)
    assert (repo / "data" / "demo" / "cohort.csv").is_file()
    from prrt.data.load import load_cohort

    cohort = load_cohort(repo / "data_manifest" / "demo.yaml", check_images="header")  # the notebooks' default
    assert cohort.n_patients == 24 and cohort.ct_pretraining["data"].is_dir()


#: A code cell longer than this is collapsed in the book (tag hide-input): its output is the point.
LONGEST_SHOWN_CELL = 8


def test_long_code_cells_are_collapsed_and_figures_have_alt_text():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
                continue
            if len(cell.source.strip().splitlines()) > LONGEST_SHOWN_CELL:
                assert "hide-input" in cell.metadata.get("tags", []), f"{path.name} cell {cell.id}: long and not collapsed"
            if re.search(r"\bfigures\.save_and_show\(", cell.source):
                alt = cell.metadata.get("mystnb", {}).get("image", {}).get("alt", "")
                assert len(alt) > 40, f"{path.name} cell {cell.id}: a figure without alt text"
