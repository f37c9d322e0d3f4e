"""Mutation testing of the code whose mistakes would silently change published numbers (`make mutate`).

Runs mutmut (configured in pyproject.toml: the files, the fast tests, fork-server isolation) on the
functions of :data:`SCOPE`, then prints the score per area:

    killed / (mutants - equivalent - GPU only)

A mutant counts as killed when a test failed or timed out; ``survived`` and ``no tests`` count
against the score. Equivalent mutants (no input can tell them from the original) are listed, each
with its reason, in CONTRIBUTING.md under "Equivalent mutants" as ``- `name`: reason``; mutants
that change only what happens on a CUDA device (which the CPU-only test machines lack) under
"Mutants only a GPU can kill". A listed mutant that a test kills is reported so that the lists
stay true. Exit status 1 when the score is
below ``--min-score`` (default 0.8).

    python tools/mutate.py            # test the mutants without a kill yet (new, changed, survivors), then report
    python tools/mutate.py --all      # test every mutant in scope again (a full run: about an hour on 2 cores)
    python tools/mutate.py --report   # report the last run only
    python tools/mutate.py --save-state   # write the verdicts so far to tools/mutation-state.json (a run does it too)

mutmut keeps each mutant's verdict in mutants/ and forgets it when the function it mutates changes, so
an incremental run re-tests the survivors (the tests may have changed) and whatever was never tested.
A killed mutant stays killed as long as its function is unchanged and no test is removed; use
``--all`` after removing or weakening tests.

A fresh clone has no mutants/ folder, and a full run takes longer than a working session on 2 cores, so the
verdicts are kept in the repository too: :data:`STATE` (``tools/mutation-state.json``) holds, for every function
in scope, mutmut's hash of its body and the exit code of each of its mutants. A run writes it when it ends
(or is stopped), and starts by giving mutmut the verdicts of the functions whose body has not changed since
(``--save-state`` writes it from a run still going). mutmut regenerates the mutants of a changed function
untested, as it does within one checkout.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Area -> mutmut name patterns (module.x_function__mutmut_N; methods are module.xǁClassǁmethod__mutmut_N).
SCOPE = {
    "evaluation statistics (prrt.evaluation: metrics, comparison, calibration)": [
        "prrt.evaluation.metrics.*", "prrt.evaluation.comparison.*", "prrt.evaluation.calibration.*",
        "prrt.evaluation.survival.x_risk_groups_logrank__*"],
    "splits (prrt.evaluation.splits)": [
        f"prrt.evaluation.splits.{f}" for f in ("x_make_splits__*", "xǁFoldǁ*", "x_iter_folds__*", "x_save_splits__*",
                                                "x_load_splits__*", "x_ensure_splits__*", "x_mean_training_patients__*",
                                                "x_splits_table__*", "x_describe_splits__*")],
    "labelling and pseudonyms (prrt.data)": ["prrt.data.privacy.x_pseudonymise__*", "prrt.data.cohort.x_pfs_label__*",
                                             "prrt.data.cohort.xǁCohortǁ*"],
    "training selection and weighting (prrt.learn)": [
        "prrt.learn.training.x_train_model__*", "prrt.learn.training.x_fit_network__*",
        "prrt.learn.training.x_check_config__*", "prrt.learn.training.x_recompute_batch_norm__*",
        "prrt.learn.training.x_predict__*", "prrt.learn.image_model.xǁImageModelǁ*", "prrt.learn.base.*",
        "prrt.learn.loop.*", "prrt.learn.engines.xǁSequentialǁ*"],
    "results (prrt.evaluation.results, prrt.study.reported)": ["prrt.evaluation.results.*",
                                                               "prrt.study.reported.x_comparison_with_study__*"],
    "external validation (prrt.evaluation.external)": ["prrt.evaluation.external.x_external_metrics__*",
                                                       "prrt.evaluation.external.x_comparison_table__*"],
}
KILLED = {"killed", "timeout"}
#: The verdicts of earlier runs, kept in the repository (see the module docstring).
STATE = ROOT / "tools" / "mutation-state.json"
MUTANT_NAME = re.compile(r"^(?P<function>.+)__mutmut_(?P<number>\d+)$")


def area_of(name: str) -> str | None:
    return next((a for a, pats in SCOPE.items() if any(fnmatch.fnmatch(name, p) for p in pats)), None)


def listed_mutants(heading: str, path: Path = ROOT / "CONTRIBUTING.md") -> dict[str, str]:
    """``{mutant: reason}`` from the list under ``### heading`` of CONTRIBUTING.md.

    Each item reads ``- `name`, `name`, ...: reason`` (one reason for several mutants).
    """
    text = path.read_text(encoding="utf-8")
    marker = f"### {heading}"
    section = text.split(marker, 1)[1] if marker in text else ""
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    out = {}
    for names, reason in re.findall(r"^- ((?:`[^`]+`(?:, )?)+): (.+)$", section, flags=re.M):
        for name in re.findall(r"`([^`]+)`", names):
            out[name] = reason
    return out


def equivalent_mutants(path: Path = ROOT / "CONTRIBUTING.md") -> dict[str, str]:
    """Mutants no input can tell from the original ("Equivalent mutants"), and mutants only a CUDA
    device can tell from it ("Mutants only a GPU can kill"): both are left out of the score; the
    report counts them apart."""
    return {**listed_mutants("Equivalent mutants", path),
            **{n: "GPU: " + r for n, r in listed_mutants("Mutants only a GPU can kill", path).items()}}


def results(mutmut: str) -> dict[str, str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True)
    found = re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", out.stdout, flags=re.M)
    return {name: status.strip() for name, status in found}


def report(status: dict[str, str], equivalent: dict[str, str], min_score: float) -> int:
    rows, survivors, stale = [], [], []
    total_k = total_n = 0
    for area in SCOPE:
        names = sorted(n for n in status if area_of(n) == area)
        k = sum(status[n] in KILLED for n in names)
        eq = [n for n in names if n in equivalent]
        stale += [n for n in eq if status[n] in KILLED]
        eq = [n for n in eq if status[n] not in KILLED]
        left = [n for n in names if status[n] not in KILLED and n not in equivalent]
        survivors += [(n, status[n]) for n in left]
        n_scored = len(names) - len(eq)
        total_k, total_n = total_k + k, total_n + n_scored
        gpu = sum(equivalent[n].startswith("GPU: ") for n in eq)
        rows.append((area, len(names), len(eq) - gpu, gpu, k, n_scored, k / n_scored if n_scored else float("nan")))
    print(f"{'area':60s} {'mutants':>8s} {'equiv.':>7s} {'GPU':>5s} {'killed':>7s} {'score':>7s}")
    for area, n, eq, gpu, k, n_scored, score in rows:
        print(f"{area:60s} {n:8d} {eq:7d} {gpu:5d} {k:7d} {score:7.1%}")
    score = total_k / total_n if total_n else float("nan")
    print(f"{'all':60s} {sum(r[1] for r in rows):8d} {sum(r[2] for r in rows):7d} {sum(r[3] for r in rows):5d} "
          f"{total_k:7d} {score:7.1%}")
    print("score = killed / (mutants - equivalent - GPU only)")
    if survivors:
        print(f"\n{len(survivors)} mutants not killed and not listed as equivalent (see `mutmut show NAME`):")
        for n, s in survivors:
            print(f"  {n}: {s}")
    if stale:
        print("\nListed as equivalent in CONTRIBUTING.md but killed by a test (remove them from the list):")
        for n in stale:
            print(f"  {n}")
    unknown = sorted(set(equivalent) - set(status))
    if unknown:
        print("\nListed as equivalent but no longer produced by mutmut (remove them from the list):")
        for n in unknown:
            print(f"  {n}")
    if not total_n:
        print("no mutants in scope: run without --report first", file=sys.stderr)
        return 1
    return 0 if score >= min_score else 1


def refresh_copies() -> None:
    """Bring the files mutmut copies once (tests, ``also_copy``, non-Python files of the package) up to date
    in mutants/: mutmut regenerates changed Python sources but leaves a stale copy of these."""
    import shutil
    import tomllib

    if not (ROOT / "mutants").is_dir():
        return
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    paths = ["tests", *cfg.get("also_copy", [])]
    paths += [str(p.relative_to(ROOT)) for src in cfg["source_paths"] for p in (ROOT / src).rglob("*")
              if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    for rel in paths:
        src, dst = ROOT / rel.rstrip("/"), ROOT / "mutants" / rel.rstrip("/")
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def scope_files(root: Path = ROOT) -> list[str]:
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]


def save_state(root: Path = ROOT, state: Path = STATE) -> int:
    """Write the verdicts in ``root/mutants`` to ``state``: per scope file, each function's hash and its mutants'
    exit codes (untested ones left out). Returns the number of verdicts written; a file without a meta file keeps
    what ``state`` had for it."""
    import json

    old = json.loads(state.read_text()) if state.is_file() else {}
    out, n = {}, 0
    for rel in scope_files(root):
        meta = root / "mutants" / f"{rel}.meta"
        if not meta.is_file():
            if rel in old:
                out[rel] = old[rel]
            continue
        doc = json.loads(meta.read_text())
        functions = {f: {"hash": h, "exit": {}} for f, h in sorted(doc["hash_by_function_name"].items())}
        for key, code in doc["exit_code_by_key"].items():
            m = MUTANT_NAME.match(key)
            function = m["function"].rpartition(".")[2] if m else None
            if code is not None and function in functions:
                functions[function]["exit"][m["number"]] = code
                n += 1
        out[rel] = functions
    state.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return n


def restore_state(root: Path = ROOT, state: Path = STATE) -> int:
    """Give mutmut the verdicts of ``state`` for every scope file that has no meta file in ``root/mutants`` yet; mutmut
    keeps them for the functions whose hash has not changed. Returns the number of verdicts given."""
    import json

    if not state.is_file():
        return 0
    n = 0
    for rel, functions in json.loads(state.read_text()).items():
        meta = root / "mutants" / f"{rel}.meta"
        if meta.is_file() or rel not in scope_files(root):
            continue
        module = rel.removesuffix(".py").replace("/", ".")
        codes = {f"{module}.{f}__mutmut_{i}": c for f, v in functions.items() for i, c in v["exit"].items()}
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": codes,
                                    "hash_by_function_name": {f: v["hash"] for f, v in functions.items()},
                                    "type_check_error_by_key": {}, "durations_by_key": {},
                                    "estimated_durations_by_key": {}}))
        n += len(codes)
    return n


def run_mutmut(mutmut: str, names: list[str], max_children: int, env: dict) -> None:
    subprocess.run([mutmut, "run", "--max-children", str(max_children), *names], cwd=ROOT, env=env, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="only report the last run")
    ap.add_argument("--all", action="store_true", help="re-test every mutant in scope, killed ones too")
    ap.add_argument("--min-score", type=float, default=0.8)
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--save-state", action="store_true", help=f"only write the verdicts so far to {STATE.name}")
    args = ap.parse_args(argv)
    mutmut = str(Path(sys.executable).parent / "mutmut")
    if args.save_state:
        print(f"{save_state()} verdicts written to {STATE.relative_to(ROOT)}")
        return 0
    if not args.report:
        if not args.all and (given := restore_state()):
            print(f"{given} verdicts of earlier runs from {STATE.relative_to(ROOT)}", flush=True)
        try:
            run_rounds(mutmut, args)
        finally:
            print(f"{save_state()} verdicts written to {STATE.relative_to(ROOT)}", flush=True)
    return report(results(mutmut), equivalent_mutants(), args.min_score)


def run_rounds(mutmut: str, args) -> None:
    """The run itself: every mutant in scope (``--all`` or no mutants/ yet), else the rounds of an incremental run."""
    # one thread per test process: OpenMP thread pools do not survive mutmut's forks
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    refresh_copies()
    # mutmut collects which tests call which function once, and afterwards only for new tests: a
    # function added or moved since (e.g. split out of another) would count as covered by no test
    # ("no tests"). Collecting afresh costs one run of the fast tests.
    (ROOT / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    patterns = [p for pats in SCOPE.values() for p in pats]
    full = args.all or not (ROOT / "mutants").is_dir()
    if full:
        run_mutmut(mutmut, patterns, args.max_children, env)
    # Named mutants are re-tested while the others keep their verdict. The first round takes every
    # mutant without a kill that is not listed as equivalent (the tests may have changed since); the
    # second, the mutants of functions that changed since the last run, which mutmut regenerates
    # untested when it starts.
    elif some := sorted(n for n in results(mutmut) if area_of(n))[:1]:
        # mutmut regenerates the mutants of changed functions only when it starts: start it on one
        # mutant (tested again, a few seconds) so that the rounds below see the new ones. Without
        # this, a run with no survivors never started mutmut and missed every changed function.
        run_mutmut(mutmut, some, args.max_children, env)
    listed = equivalent_mutants()
    for first in ([False] if full else [True, False]):
        todo = sorted(n for n, s in results(mutmut).items()
                      if area_of(n) and (s == "not checked" or first and s not in KILLED and n not in listed))
        print(f"{len(todo)} mutants in scope to test", flush=True)
        if todo:
            run_mutmut(mutmut, todo, args.max_children, env)


if __name__ == "__main__":
    sys.exit(main())
