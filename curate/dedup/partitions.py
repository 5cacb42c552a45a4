"""Dedup's bounded-memory tasks. Each reads one score part or one partition of the work folder and writes
its result there, so no process holds the whole pool's embeddings, signatures or thumbnails:

1. `prepare_part` (a task per score part): the row table (uid, preference, hashes), the identity records
   (image sha256, caption hash, caption shingle set) and the LSH band records, each hashed into `H`
   partitions; and a sample of its embeddings for the k-means.
2. `assign_part` (a task per score part): each embedding to its nearest top-level centroid (k-means fitted
   on the sample), written into that centroid's partition.
3. `image_partition` (a task per top-level centroid): SemDeDup inside the partition (its own k-means, pairs
   above 1 - eps inside each cluster), each pair confirmed by the pixel check, whose thumbnails are read from
   the download tars for this partition's candidate rows only; the copy search among the partition's rows.
4. `identity_partition`, `band_partition` (a task per hash partition): rows with the same key, and verified
   LSH pairs (exact Jaccard), as links.

Rows are numbered `g` across the score parts in order (the in-memory table's row numbers)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from curate.dedup.minhash import band_keys, shingles, signatures
from curate.dedup.rare_sizes import RARE_SIZES_FILE
from curate.dedup.semdedup import embedding_matrix
from curate.io import atomic_write_parquet
from curate.schema import STATUS, UID, Status


@dataclass(frozen=True)
class Plan:
    """What every task of one dedup run knows: its config, the work folder and the partition counts."""

    cfg: object  # DedupConfig
    work: Path
    keep_col: str | None
    hash_partitions: int
    image_keys: bool  # carry (shard, key) for the pixel check
    download_dir: Path | None = None

    def folder(self, kind: str, partition: int) -> Path:
        return self.work / kind / f"p-{partition:05d}"


def _stable_hash(values: list) -> np.ndarray:
    return np.fromiter((xxhash.xxh64_intdigest(v.encode()) for v in values), np.uint64, count=len(values))


def _write_partitioned(plan: Plan, kind: str, part: int, table: pa.Table, keys: np.ndarray) -> None:
    """`table`'s rows into `kind`'s hash partitions by `keys` (uint64), one file per (partition, part)."""
    if not table.num_rows:
        return
    target = (keys % np.uint64(plan.hash_partitions)).astype(np.int64)
    order = np.argsort(target, kind="stable")
    bounds = np.searchsorted(target[order], np.arange(plan.hash_partitions + 1))
    for p in np.flatnonzero(np.diff(bounds)):
        rows = pa.array(order[bounds[p]:bounds[p + 1]])
        atomic_write_parquet(plan.folder(kind, int(p)) / f"part-{part:05d}.parquet", table.take(rows))


def score_columns(plan: Plan) -> list[str]:
    columns = [UID, STATUS, "caption", "sha256", "caption_hash"] + ([plan.keep_col] if plan.keep_col else [])
    return columns + (["shard", "key"] if plan.image_keys else [])


def prepare_part(plan: Plan, part: int, path: Path, offset: int, sample_rows: int,
                 centroids: np.ndarray | None = None) -> dict:
    """Step 1 for one score part: rows/, identity/ and bands/ records (and, given the `centroids`, step 2
    too); returns a sample of its usable embeddings (float32, for the k-means)."""
    table = pq.read_table(path, columns=score_columns(plan))
    n = table.num_rows
    g = np.arange(offset, offset + n, dtype=np.int64)
    ok = np.asarray(pc.equal(table.column(STATUS), Status.OK).fill_null(False))
    pref = (np.asarray(table.column(plan.keep_col).to_numpy(zero_copy_only=False), np.float64)
            if plan.keep_col else np.zeros(n))
    rows = pa.table({"g": g, UID: table.column(UID), "ok": ok, "pref": np.nan_to_num(pref, nan=-np.inf),
                     "sha256": table.column("sha256"), "caption_hash": table.column("caption_hash")})
    atomic_write_parquet(plan.work / "rows" / f"part-{part:05d}.parquet", rows)
    mine = np.flatnonzero(ok)
    taken = table.take(pa.array(mine))
    cfg = plan.cfg
    sets = ([shingles(c or "", cfg.shingle, cfg.shingle_n) for c in taken.column("caption").to_pylist()]
            if cfg.captions else [])
    set_keys = ["\x1f".join(sorted(s)) for s in sets]  # a shingle set as one string ('' when empty)
    _identity_records(plan, part, taken, g[mine], set_keys)
    _band_records(plan, part, taken.column("caption"), g[mine], sets, set_keys)
    vectors, usable = _embeddings(path, ok)
    if centroids is not None:
        _write_images(plan, part, path, offset, vectors, usable, centroids)
    pick = np.random.default_rng(part).permutation(len(usable))[:sample_rows]
    return vectors[np.sort(pick)]


def _embeddings(path: Path, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, row numbers in the part) of the `ok` rows with a finite embedding, as float32."""
    vectors = embedding_matrix(pq.read_table(path, columns=["image_embedding"]).column("image_embedding"))
    usable = np.flatnonzero(ok & np.isfinite(vectors).all(1))
    return vectors[usable], usable


def _identity_records(plan: Plan, part: int, taken: pa.Table, g: np.ndarray, set_keys: list[str]) -> None:
    """(kind, key, g) of every row (`taken`: the part's `ok` rows, numbered `g`) with a key, hashed by key;
    kinds `image` (sha256), `caption` (caption hash) and `shingles` (the shingle set; an empty set is no key: an
    empty caption matches nothing)."""
    cfg = plan.cfg
    columns = {"image": taken.column("sha256").to_pylist() if cfg.exact else [],
               "caption": taken.column("caption_hash").to_pylist() if cfg.captions else [],
               "shingles": set_keys}
    kinds, keys, gs = [], [], []
    for kind, values in columns.items():
        for k, value in enumerate(values):
            if value:
                kinds.append(kind), keys.append(value), gs.append(int(g[k]))
    records = pa.table({"kind": pa.array(kinds, pa.string()), "key": pa.array(keys, pa.string()),
                        "g": pa.array(gs, pa.int64())})
    _write_partitioned(plan, "identity", part, records, _stable_hash(keys))


def _band_records(plan: Plan, part: int, captions: pa.ChunkedArray, g: np.ndarray, sets: list[set[str]],
                  set_keys: list[str]) -> None:
    """(band key, shingle-set key, g, caption) of every caption with shingles, hashed by band key."""
    mine = np.array([k for k, s in enumerate(sets) if s], np.int64)
    if not len(mine):
        return
    usable = [sets[k] for k in mine]
    keys = band_keys(signatures(usable, plan.cfg.num_perm), plan.cfg.caption_threshold)
    bands = keys.shape[1]
    set_hash = _stable_hash([set_keys[k] for k in mine])
    records = pa.table({"band_key": keys.ravel(), "set_key": np.repeat(set_hash, bands), "g": np.repeat(g[mine], bands),
                        "caption": captions.take(pa.array(np.repeat(mine, bands)))})
    _write_partitioned(plan, "bands", part, records, keys.ravel())


def assign_part(plan: Plan, part: int, path: Path, offset: int, centroids: np.ndarray) -> None:
    """Step 2 for one score part: its usable embeddings into the partition of their nearest centroid."""
    status = pq.read_table(path, columns=[STATUS]).column(STATUS)
    vectors, usable = _embeddings(path, np.asarray(pc.equal(status, Status.OK).fill_null(False)))
    _write_images(plan, part, path, offset, vectors, usable, centroids)


def _write_images(plan: Plan, part: int, path: Path, offset: int, vectors: np.ndarray, usable: np.ndarray,
                  centroids: np.ndarray) -> None:
    """images/: (g, image_embedding, and shard and key for the pixel check) by nearest centroid, and by the
    second nearest too within `partition_overlap`."""
    import faiss

    if not len(usable):
        return
    target = np.zeros(len(usable), np.uint64)
    if len(centroids) > 1:
        index = faiss.IndexFlatIP(centroids.shape[1])
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        sims, nearest = index.search(vectors, 2)
        target = nearest[:, 0].astype(np.uint64)
        also = sims[:, 0] - sims[:, 1] <= plan.cfg.partition_overlap  # near a border: in both partitions
        usable, vectors = np.r_[usable, usable[also]], np.concatenate([vectors, vectors[also]])
        target = np.r_[target, nearest[also, 1].astype(np.uint64)]
    table = pa.table({"g": usable + offset, "image_embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1)), vectors.shape[1])})
    if plan.image_keys:  # and each image's size where the part has it: the pixel check keeps a copy's shape
        sizes = [c for c in ("width", "height") if c in pq.read_schema(path).names]
        keys = pq.read_table(path, columns=["shard", "key", *sizes]).take(pa.array(usable))
        for column in keys.column_names:
            table = table.append_column(column, keys.column(column))
    _write_partitioned(replace(plan, hash_partitions=len(centroids)), "images", part, table, target)


def read_partition(folder: Path, columns: list[str] | None = None) -> pa.Table | None:
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def image_partition(plan: Plan, partition: int) -> int:
    """Step 3 for one top-level partition: links/ (first, second, similarity) and its rows' cosine to their
    SemDeDup centroid (centroid/); returns the links found."""
    from curate.dedup.images import image_links  # torch, for the pixel check: only the image tasks load it

    table = read_partition(plan.folder("images", partition))
    if table is None:
        return 0
    table = table.sort_by("g")
    g = np.asarray(table.column("g"))
    spill = plan.folder("thumbnails", partition)
    spill.mkdir(parents=True, exist_ok=True)
    rare = plan.work / RARE_SIZES_FILE
    links, centroid_sim = image_links(table, plan.cfg, plan.download_dir, spill,
                                      np.load(rare) if rare.exists() else None)
    atomic_write_parquet(plan.folder("links", partition) / "links.parquet", pa.table(
        {"first": g[links.first], "second": g[links.second], "similarity": links.similarity,
         "strength": links.strength}))
    atomic_write_parquet(plan.folder("centroid", partition) / "centroid.parquet",
                         pa.table({"g": g, "centroid_sim": centroid_sim}))
    return len(links.first)


def identity_partition(plan: Plan, partition: int) -> int:
    """Step 4a for one hash partition: each row linked to the first row (lowest g) with the same key, per
    kind (identity/ -> same/); returns the links."""
    table = read_partition(plan.folder("identity", partition))
    if table is None:
        return 0
    table = table.sort_by([("kind", "ascending"), ("key", "ascending"), ("g", "ascending")])
    kind, key, g = (table.column(c).to_numpy(zero_copy_only=False) for c in ("kind", "key", "g"))
    starts = np.r_[True, (kind[1:] != kind[:-1]) | (key[1:] != key[:-1])]
    first = g[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    linked = ~starts
    atomic_write_parquet(plan.folder("same", partition) / "same.parquet", pa.table(
        {"kind": kind[linked].astype(str), "first": first[linked], "second": g[linked]}))
    return int(linked.sum())


def band_partition(plan: Plan, partition: int) -> int:
    """Step 4b for one hash partition: pairs of different shingle sets sharing a band key whose captions'
    exact Jaccard reaches the threshold (bands/ -> captions/); returns the pairs."""
    table = read_partition(plan.folder("bands", partition))
    if table is None:
        return 0
    table = table.sort_by([("band_key", "ascending"), ("set_key", "ascending"), ("g", "ascending")])
    key, set_key = np.asarray(table.column("band_key")), np.asarray(table.column("set_key"))
    g, captions = np.asarray(table.column("g")), table.column("caption").to_pylist()
    reps = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]) | (set_key[1:] != set_key[:-1])])
    starts = np.flatnonzero(np.r_[True, key[reps][1:] != key[reps][:-1]])  # one row per shingle set per bucket
    ends = np.r_[starts[1:], len(reps)]
    found: list[tuple[int, int]] = []
    for lo, hi in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
        members = reps[lo:hi]
        sets = [shingles(captions[m] or "", plan.cfg.shingle, plan.cfg.shingle_n) for m in members]
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                if len(sets[x] & sets[y]) / len(sets[x] | sets[y]) >= plan.cfg.caption_threshold:
                    found.append((min(g[members[x]], g[members[y]]), max(g[members[x]], g[members[y]])))
    pairs = np.array(found, np.int64).reshape(-1, 2)
    atomic_write_parquet(plan.folder("captions", partition) / "captions.parquet",
                         pa.table({"first": pairs[:, 0], "second": pairs[:, 1]}))
    return len(pairs)
