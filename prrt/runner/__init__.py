"""Running the book: the run folder and its lock, papermill execution, the book build, the browser
check.

What other subpackages may use is listed in ``__all__``; the rest is private to this one.
"""

from .book import build_book
from .execute import run
from .lock import RunError, RunInterrupted, RunLocked

__all__ = [
    "RunError",
    "RunInterrupted",
    "RunLocked",
    "build_book",
    "run",
]
