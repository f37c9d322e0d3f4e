"""The repository's promises: one set of pins, two commands, stripped notebooks, book config."""

from __future__ import annotations

import json
from dataclasses import replace
import re
from pathlib import Path

import nbformat
import yaml

from prrt.profiles import PROFILES, get_profile

REPO = Path(__file__).resolve().parents[1]


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
    # the demo and paper profiles feed lesion-centred inputs; paper at 2-3 mm voxels
    assert demo.roi == paper.roi == "lesions"
    assert demo.voxel_spacing_mm == (demo.roi_min_spacing_mm,) * 3
    assert 2.0 <= paper.roi_min_spacing_mm <= 3.0
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
    readme = (REPO / "tests" / "data" / "README.md").read_text()
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
    invoked = (REPO / "Makefile").read_text() + (REPO / "prrt" / "runs.py").read_text()
    for package, how in rows.items():
        if how.startswith("program:"):
            program = re.search(r"`([^`]+)`", how).group(1)
            needle = {"python3": 'kernel_name="python3"', "jupyter lab": "jupyter lab",
                      "pytest": "pytest"}.get(program, program)
            assert needle in invoked, f"{package}: {program!r} is not run by the Makefile or prrt.runs"
        else:
            module = how.strip("`")
            assert re.search(rf"^\s*(import|from)\s+{re.escape(module)}(\.|\s|$)", code, re.M), \
                f"{package} is pinned, but nothing imports {module}"
