"""The import direction (pipelines -> train -> curate; only pipelines knows Ray), kept by import-linter's
contracts in pyproject.toml. Lazy imports inside functions count."""
from importlinter.cli import lint_imports

from tests.conftest import ROOT


def test_imports_flow_one_way():
    assert lint_imports(str(ROOT / "pyproject.toml")) == 0, "an import breaks the direction (see the report above)"
