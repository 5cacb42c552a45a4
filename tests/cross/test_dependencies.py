"""What the package needs from elsewhere: every imported distribution declared, the internals it borrows from
open_clip, datasketch and timm still where it takes them, and the model configs shipped inside it."""
import ast
import importlib
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest

from tests.conftest import ROOT

OURS = ("curate", "train", "pipelines")

# (distribution, module, name, where we use it): names that are private (a leading `_`) or live in a
# module that is not the package's public surface, so a new version may move them without notice.
BORROWED = [
    ("open_clip_torch", "open_clip.tokenizer", "_clean_lower", "curate/models/fast_tokenizer.py"),
    ("open_clip_torch", "open_clip.tokenizer", "_clean_whitespace", "curate/models/fast_tokenizer.py"),
    ("open_clip_torch", "open_clip.tokenizer", "_clean_canonicalize", "curate/models/fast_tokenizer.py"),
    ("open_clip_torch", "open_clip.tokenizer", "whitespace_clean", "curate/models/fast_tokenizer.py"),
    ("open_clip_torch", "open_clip.tokenizer", "canonicalize_text", "curate/models/fast_tokenizer.py"),
    ("open_clip_torch", "open_clip.tokenizer", "SimpleTokenizer", "curate/models/fast_tokenizer.py"),
    ("open_clip_torch", "open_clip.transformer", "PatchDropout", "train/strategies.py"),
    ("open_clip_torch", "open_clip.transformer", "VisionTransformer", "train/strategies.py"),
    ("datasketch", "datasketch.lsh", "_optimal_param", "curate/dedup/minhash.py"),
    ("timm", "timm.models.mlp_mixer", "MlpMixer", "curate/models/clip.py"),
]


def _moved(dist: str, what: str, user: str) -> str:
    return (f"{dist} {version(dist)} no longer provides {what}, which {user} relies on: pin {dist} to the "
            f"version in constraints.txt or update {user}")


def _normalized(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def _imported_modules(roots: tuple[str, ...]) -> set[str]:
    """Top-level modules imported anywhere under `roots` (lazy imports included), plus pandas where Arrow
    converts to pandas, which imports it."""
    modules = set()
    for root in roots:
        for path in (ROOT / root).rglob("*.py"):
            text = path.read_text()
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules.add(node.module.split(".")[0])
            if ".to_pandas(" in text:
                modules.add("pandas")
    return modules - set(sys.stdlib_module_names) - set(OURS)


def test_every_imported_package_is_declared():
    declared = {_normalized(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    pinned = {_normalized(line) for line in (ROOT / "constraints.txt").read_text().splitlines() if line.strip()}
    providers = packages_distributions()
    imported = _imported_modules(OURS)
    assert {"torch", "pyarrow", "open_clip"} <= imported  # the scan sees the imports
    unknown = sorted(m for m in imported if m not in providers)
    assert not unknown, f"imported modules that no installed distribution provides: {unknown}"
    needed = {m: {_normalized(d) for d in providers[m]} for m in imported}
    undeclared = sorted(m for m, dists in needed.items() if not dists & declared)
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"
    unpinned = sorted(m for m, dists in needed.items() if not dists & pinned)
    assert not unpinned, f"imported but not pinned in constraints.txt: {unpinned}"


@pytest.mark.parametrize("dist,module,name,user", BORROWED, ids=[f"{m}.{n}" for _, m, n, _ in BORROWED])
def test_borrowed_internals_are_where_we_take_them(dist, module, name, user):
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        pytest.fail(_moved(dist, f"{module}.{name}", user))


def test_the_tokenizer_internals_the_fast_path_reads_are_there():
    from open_clip import tokenizer as oc

    tok = oc.SimpleTokenizer()
    for attribute in ("byte_encoder", "encoder", "bpe", "pat", "clean_fn"):
        if not hasattr(tok, attribute):
            pytest.fail(_moved("open_clip_torch", f"SimpleTokenizer.{attribute}", "curate/models/fast_tokenizer.py"))
    if tok.clean_fn is not oc._clean_lower:
        pytest.fail(_moved("open_clip_torch", "_clean_lower as the default clean_fn", "curate/models/fast_tokenizer.py"))


def test_datasketch_optimal_param_still_returns_bands_and_rows():
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(0.8, 128, 0.1, 0.9)
    assert isinstance(bands, int) and isinstance(rows, int) and 0 < bands * rows <= 128, \
        _moved("datasketch", "_optimal_param(threshold, num_perm, fp_weight, fn_weight) -> (bands, rows)",
               "curate/dedup/minhash.py")


def test_an_installed_wheel_carries_the_model_configs_recipes_and_verifier(tmp_path):
    """Build the wheel from a copy of the sources, install it alone into a folder and load a model config
    from there, far from the repository's configs/models."""
    import shutil

    src = tmp_path / "src"
    for package in OURS:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
             "-w", str(tmp_path / "dist"), str(src)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    shipped = sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("curate/models/configs/"))
    assert shipped == sorted(f"curate/models/configs/{p.name}" for p in (ROOT / "configs" / "models").glob("*.json"))
    recipes = sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("curate/recipes/"))
    assert recipes == sorted(f"curate/recipes/{p.name}" for p in (ROOT / "configs" / "recipes").glob("*.yaml"))
    assert "curate/dedup/copy_verifier.pt" in zipfile.ZipFile(wheel).namelist()  # dedup's default needs it

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    probe = ("from curate.models.clip import MODEL_CONFIG_DIR, model_config; "
             "print(MODEL_CONFIG_DIR); print(model_config('tiny-vit-32')['embed_dim'])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    where, dim = done.stdout.split()
    assert Path(where).is_relative_to(site) and int(dim) > 0
