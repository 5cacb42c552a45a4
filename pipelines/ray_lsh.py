"""LSH banding as a Ray shuffle: (band, key, row) records grouped by (band, key) across the cluster,
so the bucket table of a pool larger than one node's memory never sits in one process."""
from __future__ import annotations

import numpy as np


def _bucket_members(group):
    """One (band, key) group -> its rows as one list, when it holds two or more."""
    import pyarrow as pa

    rows = group.column("row").to_pylist()
    return pa.table({"members": pa.array([rows] if len(rows) > 1 else [], pa.list_(pa.int64()))})


def ray_buckets(keys: np.ndarray, blocks: int = 8) -> list[np.ndarray]:
    """The same buckets as `curate.dedup.minhash.memory_buckets`, grouped by a Ray Data shuffle."""
    import pyarrow as pa
    import ray

    n, bands = keys.shape
    records = pa.table({"band": np.repeat(np.arange(bands, dtype=np.int32)[None, :], n, axis=0).ravel(),
                        "key": keys.ravel(), "row": np.repeat(np.arange(n, dtype=np.int64), bands)})
    grouped = (ray.data.from_arrow(records).repartition(blocks)
               .groupby(["band", "key"]).map_groups(_bucket_members, batch_format="pyarrow"))
    return [np.array(r["members"]) for r in grouped.iter_rows()]
