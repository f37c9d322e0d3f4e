"""Mechanisms know no chapter: every model name lives in prrt.study.names, and no module outside prrt.study holds one."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

from prrt.data.load import load_cohort
from prrt.profiles import get_profile
from prrt.study.ch02_labs import lab_chapter_specs
from prrt.study.ch03_images import image_specs
from prrt.study.ch04_fusion import chapter_specs
from prrt.study.names import MODELS

PACKAGE = Path(__file__).resolve().parents[2] / "prrt"


def model_names_in(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every string literal (f-string parts included) that holds a model name as a word."""
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, MODELS), key=len, reverse=True)) + r")\b")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(node.lineno, m) for m in pattern.findall(node.value)]
    return found


def test_no_model_name_outside_the_study():
    hits = {str(p.relative_to(PACKAGE)): found for p in PACKAGE.rglob("*.py")
            if "study" not in p.relative_to(PACKAGE).parts and (found := model_names_in(p))}
    assert not hits, f"model names outside prrt/study (move the knowledge into prrt.study): {hits}"


def test_the_check_sees_a_name_in_a_docstring_or_a_message(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""Reads lab_rf."""\nx = f"the {y} of pet_cnn"\nz = "lab_rfx pet"\n')
    assert model_names_in(f) == [(1, "lab_rf"), (2, "pet_cnn")]


def test_every_model_a_chapter_builds_is_named_in_one_place(small_cohort_dir, tmp_path):
    cohort = load_cohort(small_cohort_dir / "manifest.yaml", check_images="exists")
    names = set()
    profiles = [get_profile(name) for name in ("smoke", "demo", "paper")]
    for p in profiles + [replace(profiles[0], fusion_mechanism="intermediate")]:
        specs = (lab_chapter_specs(cohort, cohort.data[[]], p) + image_specs(cohort, p)
                 + chapter_specs(cohort, p, {"w": 0}, run_dir=tmp_path) + chapter_specs(cohort, p, None, run_dir=tmp_path))
        names |= {s.name for s in specs}
    assert names == set(MODELS)
