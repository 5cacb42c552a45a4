import json
import socket
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.download.download import run_download
from curate.io import Part, part_name
from curate.stage import MapStage, Resources, commit_part, stage_part
from pipelines.runners import LocalRunner, PartsFailed, pending_parts
from tests.conftest import fast_download, read_parts


class AddLength(MapStage):
    """A tiny map stage: caption length; fails for good on the parts named in `fail_on`."""

    name = "length"
    provides = ("caption_chars",)

    def __init__(self, fail_on=(), drop_rows=False):
        self.fail_on, self.drop_rows = set(fail_on), drop_rows

    def process_part(self, table, part):
        if part.name in self.fail_on:
            raise ValueError(f"planted failure in {part.name}")
        out = table.append_column("caption_chars", pc.utf8_length(table.column("caption")))
        return out.slice(1) if self.drop_rows else out


def _parts(tmp_path, n_parts=4, rows=5):
    parts = []
    for i in range(n_parts):
        path = tmp_path / "in" / f"{part_name(i)}.parquet"
        path.parent.mkdir(exist_ok=True)
        uids = [f"{i:016x}{j:016x}" for j in range(rows)]
        pq.write_table(pa.table({"uid": uids, "caption": ["x" * j for j in range(rows)]}), path)
        parts.append(Part(i, path, tmp_path / "stage"))
    return parts


def _runners(request):
    if request.param == "ray":
        ray = request.getfixturevalue("ray_local")
        from pipelines.ray_runner import RayRunner

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

        return RayRunner(part_retries=1)
    return LocalRunner(part_retries=1)


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def runner(request):
    return _runners(request)


def test_map_stage_adds_its_column_to_every_part(runner, tmp_path):
    parts = _parts(tmp_path)
    runner.map_parts(AddLength(), parts)
    out = read_parts(tmp_path / "stage")
    assert out.num_rows == 20 and out.column("caption_chars").to_pylist() == [0, 1, 2, 3, 4] * 4


def test_a_part_that_always_fails_is_named_and_the_others_finish(runner, tmp_path):
    parts = _parts(tmp_path)
    with pytest.raises(PartsFailed, match="part-00002") as err:
        runner.map_parts(AddLength(fail_on={"part-00002"}), parts)
    assert list(err.value.failed) == ["part-00002"]
    done = sorted(p.name for p in (tmp_path / "stage" / "_done").iterdir())
    assert done == ["part-00000.json", "part-00001.json", "part-00003.json"]
    runner.map_parts(AddLength(), parts)  # the fix lands: only the failed part runs
    assert len(list((tmp_path / "stage" / "_done").iterdir())) == 4


def test_a_stage_that_drops_rows_breaks_the_contract(tmp_path):
    with pytest.raises(PartsFailed) as err:
        LocalRunner(part_retries=0).map_parts(AddLength(drop_rows=True), _parts(tmp_path, n_parts=1))
    assert "never drop" in err.value.failed["part-00000"]
    assert not (tmp_path / "stage" / "part-00000.parquet").exists()


def test_changed_stage_config_reruns_done_parts(tmp_path):
    parts = _parts(tmp_path, n_parts=2)

    class Versioned(AddLength):
        version = "1"

        def config_fingerprint(self):
            return self.version

    stage = Versioned()
    LocalRunner().map_parts(stage, parts)
    first = (tmp_path / "stage" / "_done" / "part-00000.json").read_text()
    stage.version = "2"
    LocalRunner().map_parts(stage, parts)
    assert (tmp_path / "stage" / "_done" / "part-00000.json").read_text() != first


def test_a_staged_part_counts_as_done_only_once_committed(tmp_path):
    """What a worker finishes stays in its attempt's staging folder until the driver commits it, so a
    worker that outlives its driver leaves nothing a rerun would take as done."""
    parts = _parts(tmp_path, n_parts=2)
    orphan, _ = stage_part(AddLength(), parts[0])  # a worker whose driver died: never committed
    assert orphan.staging_dir.is_dir() and not parts[0].output_path.exists()
    assert pending_parts(AddLength(), parts) == parts
    attempt, marker = stage_part(AddLength(), parts[0])
    commit_part(attempt, marker)
    assert pending_parts(AddLength(), parts) == parts[1:]
    assert pq.read_table(parts[0].output_path).column("caption_chars").to_pylist() == [0, 1, 2, 3, 4]
    assert json.loads(parts[0].done_path.read_text())["node"] == socket.gethostname()
    assert list((tmp_path / "stage").glob(".*.tmp")) == []  # the orphan's folder went with the commit


def test_a_part_whose_input_changed_runs_again(tmp_path):
    """Same uids, other bytes (a download part whose transient failures were fetched again): the
    next stage's part is stale."""
    parts = _parts(tmp_path, n_parts=2)
    LocalRunner().map_parts(AddLength(), parts)
    table = pq.read_table(parts[1].input_path)
    pq.write_table(table.set_column(1, "caption", pa.array(["longer caption"] * 5)), parts[1].input_path)
    assert pending_parts(AddLength(), parts) == parts[1:]
    LocalRunner().map_parts(AddLength(), parts)
    assert pq.read_table(parts[1].output_path).column("caption_chars").to_pylist() == [14] * 5


@pytest.mark.ray
def test_ray_actor_pool_parts_are_committed_by_the_driver(tmp_path, ray_local):
    """The actor path (model stages): actors stage whole parts, the driver commits them; each marker
    names the Ray node that ran the part."""
    from pipelines.ray_runner import RayRunner

    class PooledLength(AddLength):
        resources = Resources(actors=1)

    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    parts = _parts(tmp_path, n_parts=3)
    RayRunner().map_parts(PooledLength(), parts)
    assert read_parts(tmp_path / "stage").column("caption_chars").to_pylist() == [0, 1, 2, 3, 4] * 3
    nodes = {json.loads(p.done_path.read_text())["node"] for p in parts}
    assert nodes == {ray_local.get_runtime_context().get_node_id()}
    assert list((tmp_path / "stage").glob(".*.tmp")) == []


@pytest.mark.ray
def test_ray_and_local_download_give_the_same_uids_and_statuses(small_pool, tmp_path, ray_local):
    from pipelines.ray_runner import RayRunner

    cfg = fast_download(input=small_pool / "pool.parquet")
    run_download(cfg, tmp_path / "local", LocalRunner(), small_pool)
    run_download(cfg, tmp_path / "ray", RayRunner(), small_pool)
    cols = ["uid", "status", "sha256", "width", "height", "shard"]
    local = read_parts(tmp_path / "local" / "download").select(cols)
    ray = read_parts(tmp_path / "ray" / "download").select(cols)
    assert local.equals(ray)
    assert (tmp_path / "local/download/stats.json").read_text().split('"wall_s"')[0] == \
        (tmp_path / "ray/download/stats.json").read_text().split('"wall_s"')[0]


def _node_and_square(x: int) -> tuple[str | None, int]:
    """A global step's task: where it ran (None outside Ray) and its result."""
    import ray

    from pipelines.ray_options import node_id

    return (node_id() if ray.is_initialized() else None), x * x


def test_global_tasks_return_in_order_and_a_store_run_keeps_them_on_the_driver_node(runner):
    calls = [(_node_and_square, (x,)) for x in range(6)]
    assert [r[1] for r in runner.parallel(calls, "squares")] == [x * x for x in range(6)]
    if runner.name == "ray":
        from pipelines.ray_options import node_id

        runner.copy = object()  # a run on a store: its tasks read the driver's working copy
        assert {r[0] for r in runner.parallel(calls, "squares")} == {node_id()}
