"""Provenance of a run: file hashes, where the repository's parts are, the git state and the software
environment.

:func:`file_sha256` hashes a file's content (memoised by path, size and modification time): for the image
cache's keys, the pretraining card, the cached Grad-CAM maps and ``run.json``. :func:`git_state`,
:func:`environment_info` (Python, the platform, the versions of :data:`PACKAGES`, the device) and
:func:`input_hashes` (every input file; images keyed by pseudonym, not by path) go into ``run.json``;
:func:`relative` writes a path relative to the run directory (an absolute path may name a user or a
patient). :data:`REPO_ROOT`,
:data:`NOTEBOOKS_DIR` and :data:`BOOK_SOURCES` say where the notebooks and the book's sources are;
:func:`repository_url` is the public repository the book's launch buttons open.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# ---- cache --------------------------------------------------------------------------------------
_HASHES: dict[tuple, str] = {}


def file_sha256(path) -> str:
    """SHA-256 of a file's content (memoised by path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
#: The repository's files and folders that the book is built from besides the notebooks.
BOOK_SOURCES = ["_config.yml", "_toc.yml", "book", "data_manifest"]
PACKAGES = ["torch", "monai", "torchio", "nibabel", "simpleitk", "numpy", "scipy", "pandas", "scikit-learn",
            "statsmodels", "lifelines", "matplotlib", "papermill", "jupyter-book"]


def git_state(repo: Path = REPO_ROOT) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment_info() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        device["cuda"] = torch.cuda.is_available()
        if device["cuda"]:
            device["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        device["cuda"] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "prrt": importlib.metadata.version("prrt"),
            "packages": versions, "device": device}


def relative(path, start) -> str:
    """``path`` relative to the folder ``start`` (absolute paths may name a user or a patient)."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def input_hashes(cohort, run_dir) -> dict:
    """SHA-256 of every input file; images keyed by pseudonym and modality (no paths: they may name patients);
    the manifest's path relative to the run directory."""
    images = {}
    for pid in cohort.data.index:
        entry = {}
        for m in cohort.modalities:
            p = cohort.image_path(pid, m)
            if p is not None:
                entry[m] = file_sha256(p)
        images[pid] = entry
    return {
        "manifest": {"path": relative(cohort.manifest_path, run_dir), "sha256": file_sha256(cohort.manifest_path)},
        "table": {"file": cohort.input_files[1].name, "sha256": file_sha256(cohort.input_files[1])},
        "images": images,
    }


def repository_url() -> str | None:
    """The public repository the book's launch buttons (Binder) open: $PRRT_REPOSITORY_URL, else the GitHub
    repository that GitHub Actions builds ($GITHUB_REPOSITORY); None when neither is set."""
    if os.environ.get("PRRT_REPOSITORY_URL"):
        return os.environ["PRRT_REPOSITORY_URL"]
    if os.environ.get("GITHUB_REPOSITORY"):
        return f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/{os.environ['GITHUB_REPOSITORY']}"
    return None
