"""Pipeline configuration: YAML -> pydantic (unknown keys rejected), `--set a.b=value` overrides,
and the resolved copy every run writes next to its outputs."""
from __future__ import annotations

import datetime
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from curate.registry import NAMES, STEPS
from curate.stage import ConfigError
from curate.storage import SECRET_KEYS, StorageConfig

PROVENANCE_PACKAGES = ("torch", "open_clip_torch", "img2dataset", "webdataset", "ray", "pyarrow", "pydantic")


class RunnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ray", "local"] = "ray"
    ray_address: str | None = Field(None, description="join this Ray cluster; default: start a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    part_retries: int = Field(2, ge=0, le=20)


class PipelineBase(BaseModel):
    """What every pipeline config has besides the stage sections."""

    model_config = ConfigDict(extra="forbid")
    name: str = "run"
    stages: list[str] = Field(default_factory=lambda: [s.name for s in STEPS if s.default])
    serve_synth: bool = Field(True, description="serve the run's synth files on loopback while downloading")
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig,
                                   description="how to reach an object store (--out s3://...); secrets never "
                                               "reach config.resolved.yaml")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        unknown = [s for s in stages if s not in NAMES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; known stages, in order: {list(NAMES)}")
        return [s for s in NAMES if s in stages]


# A section per registered stage, in pipeline order, each of its Step's config class.
PipelineConfig = create_model("PipelineConfig", __base__=PipelineBase,
                              **{s.name: (s.config, Field(default_factory=s.config)) for s in STEPS})


def _parse_override(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set download.timeout_s=5")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for k in path[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {k} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: Path | None, overrides: list[str] = (), schema: type[BaseModel] = PipelineConfig):
    """Read YAML (safe_load only), apply overrides, validate against `schema` (the pipeline config by
    default); every problem is a ConfigError."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
    data = apply_overrides(data, list(overrides))
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, str(path or "defaults"))) from err


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def write_resolved(cfg: PipelineConfig, out_dir: Path) -> Path:
    """`config.resolved.yaml`: the full config (loadable again) headed by provenance comments."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = [f"# resolved {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
              f"# git_sha: {_git_sha()}"]
    header += [f"# {p}: {_version(p)}" for p in PROVENANCE_PACKAGES]
    body = yaml.safe_dump(cfg.model_dump(mode="json", exclude={"storage": set(SECRET_KEYS)}), sort_keys=False)
    path = out_dir / "config.resolved.yaml"
    path.write_text("\n".join(header) + "\n" + body)
    return path
