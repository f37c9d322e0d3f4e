"""Privacy: pseudonyms, the manifest's privacy check, and the guard that keeps identifiers out of the book.

:func:`pseudonymise` maps each patient ID to a pseudonym (``P001``, ``P002``, …) in the order of a
SHA-256 hash of the cohort name and the ID; another prefix is used when the hospital's own IDs look like
pseudonyms. :func:`check_privacy`, a check of :func:`prrt.data.load_cohort`, refuses clinical columns that
look like identifiers.

The guard: :func:`identifier_tokens` lists the strings a published book must never contain (the patient
IDs, rare values of declared text columns, the image paths and their rare folder or file names, the
manifest's folder); :func:`checkable_tokens` leaves out those that cannot be searched for (shorter than
:data:`MIN_ID_LENGTH_CHECKED` characters, or words of the book's own text, :func:`fixed_text`);
:func:`find_identifiers` finds the others in the files of a built book, which
:func:`prrt.runner.build_book` then refuses to publish.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import nbformat

from ..provenance import BOOK_SOURCES, REPO_ROOT
from .checks import RARE_LEVEL, Draft
from .cohort import Cohort
from .manifest import Problem

#: Pseudonym prefixes, in order of preference: the first whose pseudonyms equal no patient ID is used.
PSEUDONYM_PREFIXES = ("P", "PS", "PX", "Q", "QX")


def pseudonymise(ids: list[str], cohort_name: str, prefixes=PSEUDONYM_PREFIXES, taken=()) -> dict[str, str]:
    """Map each patient ID to a pseudonym ``P001``, ``P002``, ….

    The order is that of a SHA-256 hash of the cohort name and the ID, so it is stable for a
    cohort, independent of the row order of the table, and reveals nothing of the ID itself. When
    a hospital's own IDs look like pseudonyms (``P001``), another prefix is used (``PS001``), so
    that no pseudonym in the book can be read as somebody's ID. ``prefixes``: the prefixes to try, in
    order; ``taken``: further strings no pseudonym may equal (another cohort's IDs and pseudonyms).
    """
    width = max(3, len(str(len(ids))))
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{cohort_name}:{i}".encode()).hexdigest())
    taken = {str(i).casefold() for i in [*ids, *taken]}
    for prefix in prefixes:
        mapping = {pid: f"{prefix}{k + 1:0{width}d}" for k, pid in enumerate(order)}
        if not {v.casefold() for v in mapping.values()} & taken:
            return mapping
    raise ValueError("every pseudonym prefix collides with the patient IDs; rename the IDs")


def check_privacy(d: Draft) -> list[Problem]:
    """No identifier-like clinical column: text with a different value for every patient, or numbers that are all
    different whole numbers of 6 or more digits (record numbers, dates written as yyyymmdd)."""
    problems = []
    for col in d.clinical:
        if col in d.categorical:
            continue
        s = d.values[col].dropna()
        if len(s) >= RARE_LEVEL and s.nunique() == len(s) and (s == s.round()).all() and (s.abs() >= 1e5).all():
            problems.append(Problem(
                "holds a different whole number of 6 or more digits for every patient: it looks like a record number "
                "or a date, and Table 1 would publish its median and quartiles. Remove it from 'clinical'",
                column=col, file=str(d.path)))
    for col in d.categorical:
        s = d.values[col].dropna().astype(str)
        if len(s) >= RARE_LEVEL and s.nunique() == len(s):
            problems.append(Problem(
                f"has a different value for every patient ({len(s)} values): it looks like an identifier (a name, "
                "a date, a record number), and Table 1 would have nothing to summarise. Remove it from 'clinical'",
                column=col, file=str(d.path)))
    return problems


def identifier_tokens(cohort: Cohort) -> dict[str, str]:
    """Strings a published book must never contain, with what each is (for the guard's message).

    The patient IDs; the levels of declared text columns seen in fewer than :data:`RARE_LEVEL`
    patients (Table 1 pools them); the image paths as written in the table and each of their folder
    or file names that belongs to fewer than :data:`RARE_LEVEL` patients; the manifest's folder.
    """
    tokens: dict[str, str] = {}
    for pid, pseudo in cohort.pseudonym_of_id().items():
        tokens[pid] = f"the patient ID of {pseudo}"
    for col in cohort.categorical:
        counts = cohort.data[col].dropna().astype(str).value_counts()
        for level, n in counts.items():
            if n < RARE_LEVEL:
                tokens.setdefault(level, f"a rare value of column {col!r}")
    parts: dict[str, set] = {}
    for m in cohort.modalities:
        for pid, p in cohort.data[f"{m}_path"].dropna().items():
            tokens.setdefault(str(p), f"an image path ({m})")
            for part in Path(p).parts[1:]:
                parts.setdefault(part, set()).add(pid)
    for part, who in parts.items():
        if len(who) < RARE_LEVEL:
            tokens.setdefault(part, "a folder or file name of an image path")
    tokens.setdefault(str(cohort.manifest_path.parent), "the manifest's folder")
    return tokens


#: Patient IDs shorter than this are not searched for in the book (they would match ordinary text).
MIN_ID_LENGTH_CHECKED = 4


def _token_pattern(tokens) -> re.Pattern:
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
                      + r")(?![\w-])")


def fixed_text(repo_root=None) -> str:
    """The book's own text, the same for every run: its hand-written pages and configuration, and the
    notebooks' cells as written (not their outputs)."""
    repo_root = Path(repo_root) if repo_root else REPO_ROOT
    parts = []
    for name in BOOK_SOURCES:
        p = repo_root / name
        for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []):
            if f.is_file() and f.suffix in {".md", ".yml", ".yaml", ".bib", ".json"}:
                parts.append(f.read_text(errors="ignore"))
    for nb in sorted((repo_root / "notebooks").glob("*.ipynb")):
        parts += [c.source for c in nbformat.read(nb, as_version=4).cells]
    return "\n".join(parts)


def checkable_tokens(tokens: dict, fixed: str) -> tuple[dict, int]:
    """The tokens the book's guard searches for, and how many it cannot: a token shorter than
    ``MIN_ID_LENGTH_CHECKED`` characters, or one that is a word of the book's own fixed text (a hospital ID
    ``P001``, a rare level ``Other``), would be found on every page; it is left out (and counted)."""
    long_enough = {t: d for t, d in tokens.items() if len(t) >= MIN_ID_LENGTH_CHECKED}
    in_fixed = {m.group(1) for m in _token_pattern(long_enough).finditer(fixed)} if long_enough else set()
    keep = {t: d for t, d in long_enough.items() if t not in in_fixed}
    return keep, len(tokens) - len(keep)


def find_identifiers(book_dir: Path, tokens) -> list[tuple[str, str]]:
    """Files of a built book that contain any of ``tokens`` (as a whole word): ``(file, what it is)``.

    ``tokens`` maps each string to what it is (``"the patient ID of P007"``). Every file is read as bytes
    (HTML, JavaScript, the search index, ``_sources``, notebooks, PNG metadata), except the theme's own
    ``_static`` files.
    """
    tokens = {str(t): d for t, d in tokens.items() if len(str(t)) >= MIN_ID_LENGTH_CHECKED}
    if not tokens:
        return []
    pattern = _token_pattern(tokens)
    hits = []
    for f in sorted(book_dir.rglob("*")):
        rel = f.relative_to(book_dir)
        if f.is_file() and rel.parts[0] != "_static":
            text = f.read_bytes().decode("utf-8", errors="ignore")
            for m in pattern.finditer(text):
                hits.append((str(rel), tokens[m.group(1)]))
    return hits
