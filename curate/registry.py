"""The stages in pipeline order. The config (`stages:` and a section per stage), the CLI's stage commands,
`curate run`, `curate status` and the report's funnel all read this list: a new stage is one module with
its Step and one line here."""
from __future__ import annotations

from curate.dedup.step import DedupStep
from curate.download.download import DownloadStep
from curate.filter import FilterStep
from curate.score.score import ScoreStep
from curate.shard import ShardStep
from curate.stage import Step
from curate.synthetic.synth import SynthStep
from curate.tier.tier import TierStep

STEPS: tuple[Step, ...] = (SynthStep(), DownloadStep(), FilterStep(), ScoreStep(), DedupStep(), TierStep(), ShardStep())
BY_NAME: dict[str, Step] = {step.name: step for step in STEPS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
