"""What importing prrt does to the process (prrt/__init__.py)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_prrt_first_keeps_jsonschema_from_building_the_iri_grammar_and_manifests_still_validate():
    code = ("import prrt, sys, jsonschema\n"
            "from prrt.data.manifest import ManifestError\n"
            "assert sys.modules['rfc3987_syntax'] is None, sys.modules['rfc3987_syntax']\n"
            "assert 'lark' not in sys.modules\n"
            "v = jsonschema.Draft202012Validator({'type': 'object', 'required': ['table']})\n"
            "assert [e.message for e in v.iter_errors({})] == [\"'table' is a required property\"]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
