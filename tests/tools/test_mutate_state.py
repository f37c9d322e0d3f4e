"""tools/mutate.py keeps mutmut's verdicts in the repository (tools/mutation-state.json) and gives them back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _mutate():
    spec = importlib.util.spec_from_file_location("mutate", REPO / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _root(tmp_path, files=("pkg/a.py", "pkg/b.py")) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pyproject.toml").write_text("[tool.mutmut]\nonly_mutate = [" + ", ".join(f'"{f}"' for f in files) + "]\n")
    return tmp_path


def _meta(root, rel, codes, hashes):
    path = root / "mutants" / f"{rel}.meta"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes, "hash_by_function_name": hashes,
                                "type_check_error_by_key": {}, "durations_by_key": {k: 1.0 for k in codes},
                                "estimated_durations_by_key": {}}))


def test_the_verdicts_go_to_the_state_and_come_back_to_a_fresh_checkout(tmp_path):
    mutate = _mutate()
    root = _root(tmp_path / "one")
    codes = {"pkg.a.x_f__mutmut_1": 1, "pkg.a.x_f__mutmut_2": 0, "pkg.a.x_f__mutmut_3": None,
             "pkg.a.xǁCǁm__mutmut_1": 36}
    _meta(root, "pkg/a.py", codes, {"x_f": "h1", "xǁCǁm": "h2"})
    state = tmp_path / "state.json"
    assert mutate.save_state(root, state) == 3  # the untested mutant is left out
    saved = json.loads(state.read_text())
    assert saved == {"pkg/a.py": {"x_f": {"hash": "h1", "exit": {"1": 1, "2": 0}},
                                  "xǁCǁm": {"hash": "h2", "exit": {"1": 36}}}}
    fresh = _root(tmp_path / "two")
    assert mutate.restore_state(fresh, state) == 3
    back = json.loads((fresh / "mutants" / "pkg" / "a.py.meta").read_text())
    assert back["exit_code_by_key"] == {k: v for k, v in codes.items() if v is not None}
    assert back["hash_by_function_name"] == {"x_f": "h1", "xǁCǁm": "h2"}
    assert not (fresh / "mutants" / "pkg" / "b.py.meta").exists()  # nothing was known of it


def test_a_checkout_with_its_own_verdicts_keeps_them_and_a_file_without_any_keeps_the_states(tmp_path):
    mutate = _mutate()
    root = _root(tmp_path / "one")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pkg/a.py": {"x_f": {"hash": "old", "exit": {"1": 0}}},
                                 "pkg/b.py": {"x_g": {"hash": "h", "exit": {"1": 1}}},
                                 "pkg/gone.py": {"x_h": {"hash": "h", "exit": {"1": 1}}}}))
    _meta(root, "pkg/a.py", {"pkg.a.x_f__mutmut_1": 1}, {"x_f": "new"})
    assert mutate.restore_state(root, state) == 1  # only b: a has its own, gone is out of scope
    assert json.loads((root / "mutants" / "pkg" / "a.py.meta").read_text())["hash_by_function_name"] == {"x_f": "new"}
    (root / "mutants" / "pkg" / "b.py.meta").unlink()
    mutate.save_state(root, state)
    saved = json.loads(state.read_text())
    assert saved["pkg/a.py"] == {"x_f": {"hash": "new", "exit": {"1": 1}}}
    assert saved["pkg/b.py"] == {"x_g": {"hash": "h", "exit": {"1": 1}}} and "pkg/gone.py" not in saved
