"""The package's layers hold (import-linter, contracts in pyproject.toml): each layer imports only
the layers below it, the science never launches anything, and no import cycle exists."""

import shutil
import subprocess
import sys
from pathlib import Path

from hiresmed_nb.params import project_root


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    command = str(lint_imports) if lint_imports.exists() else shutil.which("lint-imports")
    assert command, "lint-imports (import-linter) is not installed: make installs it"
    checked = subprocess.run(
        [command, "--no-cache"], cwd=project_root(), capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert "0 broken" in checked.stdout
