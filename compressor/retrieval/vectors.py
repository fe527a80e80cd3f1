"""FAISS indexes over unit vectors (inner product = cosine), addressed by int64 ids.

- ``flat``: exact search. The default, right up to a few hundred thousand vectors.
- ``ivf``: inverted lists (``nlist`` centroids, ``nprobe`` searched). Until the collection holds
  ``TRAIN_PER_LIST * nlist`` vectors it stays exact (k-means on fewer points is noise), then it is
  trained on everything it holds.
- ``hnsw``: graph search (``m`` links, ``ef_construction``, ``ef_search``).

A deleted id is a tombstone that searches skip (HNSW cannot delete at all; a flat index would move
every later row on each delete), and ``compact()`` rebuilds without them. A trained IVF deletes
from its lists. So until compaction a flat index only grows at its end: a snapshot can copy its
rows a slice at a time (``rows``) without holding the store's lock for the whole copy.

Exact search of a few queries runs as one BLAS matrix product over FAISS's own vector storage:
FAISS's flat search parallelises over queries, so a single query would use one core only. The
same append-only storage lets a search scan a slice of rows at a time (``search_rows``), so that
the store holds its lock for one slice, not for a scan of a million rows.

A metadata filter arrives as the set of allowed ids. When it is small, the allowed vectors are
scored exactly (an approximate index with a restrictive filter can miss the few that pass).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np

TRAIN_PER_LIST = 39  # FAISS's own minimum of training points per centroid
EXACT_FILTER_LIMIT = 4096  # allowed sets up to this size are scored exactly
SMALL_BATCH = 20  # fewer queries than this: exact search as one BLAS product (FAISS's own threshold)
SEARCH_SLICE_ROWS = 1 << 16  # rows a search scans per slice (~100 MB of 384-dim vectors)
KINDS = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexSpec:
    kind: str = "flat"
    nlist: int = 1024
    nprobe: int = 16
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index type {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("nlist", "nprobe", "m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"index {name} must be at least 1, got {getattr(self, name)}")

    def describe(self) -> dict:
        return asdict(self)


def _exact(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def stored_rows(index: faiss.Index, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the ids and vectors at rows ``start``..``stop`` of a flat ``IndexIDMap2`` (an
    append-only ``VectorIndex``'s ``index``)."""
    flat = faiss.downcast_index(index.index)
    count, dim = flat.ntotal, flat.d
    stored = faiss.rev_swig_ptr(flat.get_xb(), count * dim).reshape(count, dim)
    ids = faiss.rev_swig_ptr(index.id_map.data(), count)
    return ids[start:stop].astype(np.int64), stored[start:stop].copy()


class VectorIndex:
    def __init__(self, dim: int, spec: IndexSpec, index: faiss.Index | None = None,
                 tombstones: set[int] | None = None) -> None:
        self.dim = dim
        self.spec = spec
        self.tombstones = tombstones or set()
        self.index = index if index is not None else self._empty()
        self._dead_positions: np.ndarray | None = None  # flat storage rows of the tombstones, when sorted

    def _empty(self) -> faiss.Index:
        if self.spec.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(self.dim, self.spec.m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.spec.ef_construction
            return faiss.IndexIDMap2(graph)
        return _exact(self.dim)  # ivf starts exact until it has enough points to train

    @property
    def trained_ivf(self) -> bool:
        return isinstance(self.index, faiss.IndexIVF)

    def __len__(self) -> int:
        return self.index.ntotal - len(self.tombstones)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
        if self.spec.kind == "ivf" and not self.trained_ivf and self.index.ntotal >= TRAIN_PER_LIST * self.spec.nlist:
            self._train_ivf()

    def vectors_of(self, ids: list[int]) -> np.ndarray:
        """The stored vectors of ``ids`` [len(ids), dim] (float32)."""
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))

    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        live = np.array([i not in self.tombstones for i in ids], dtype=bool) if self.tombstones else slice(None)
        ids = ids[live]
        return ids, self.index.reconstruct_batch(ids)

    def _train_ivf(self) -> None:
        ids, vectors = self._all()
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, self.spec.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by id
        ivf.add_with_ids(vectors, ids)
        self.index = ivf
        self.tombstones = set()
        self._dead_positions = None

    def remove(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if self.trained_ivf:
            ids = np.ascontiguousarray(ids, dtype=np.int64)  # IVF's hashtable removes by an ID array only
            self.index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
        else:
            self.tombstones.update(int(i) for i in ids)
            self._dead_positions = None

    def needs_compaction(self) -> bool:
        return len(self.tombstones) > max(1000, self.index.ntotal // 5)

    def compact(self) -> None:
        """Rebuild without tombstones."""
        ids, vectors = self._all()
        self.tombstones = set()
        self._dead_positions = None
        self.index = self._empty()
        self.add(ids, vectors)

    @property
    def append_only(self) -> bool:
        """Whether rows only ever join at the end (flat storage, tombstones for deletes) until ``compact``."""
        return self.spec.kind != "hnsw" and not self.trained_ivf

    @classmethod
    def from_rows(cls, dim: int, spec: IndexSpec, ids: np.ndarray, vectors: np.ndarray,
                  tombstones: set[int]) -> VectorIndex:
        """An append-only index holding ``vectors`` under ``ids`` in this order, with ``tombstones``."""
        made = cls(dim, spec, _exact(dim), tombstones)
        made.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
        return made

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids, ``(len(queries), k)`` each, best first; missing hits have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None and len(allowed) <= EXACT_FILTER_LIMIT:
            return self._search_exact(queries, k, allowed)
        if allowed is None and len(queries) < SMALL_BATCH and self.scans_rows():
            return self.search_rows(queries, k, 0, self.index.ntotal)
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
        elif self.tombstones:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self.tombstones, np.int64)))
        if self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.spec.ef_search, k))
        elif self.trained_ivf:
            params = faiss.SearchParametersIVF(nprobe=self.spec.nprobe)
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return self.index.search(queries, k, params=params)

    def _tombstone_rows(self) -> np.ndarray | None:
        """The storage rows of the tombstones, found by binary search: ids are handed out in increasing
        order and rows join at the end, so the id map is sorted. None if it is not (then FAISS's own
        filtered search runs)."""
        if not self.tombstones:
            return np.empty(0, dtype=np.int64)
        if self._dead_positions is None:
            stored = faiss.rev_swig_ptr(self.index.id_map.data(), self.index.ntotal)
            dead = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
            positions = np.searchsorted(stored, dead).clip(max=len(stored) - 1)
            if not np.array_equal(stored[positions], dead):
                return None
            self._dead_positions = positions
        return self._dead_positions

    def scans_rows(self) -> bool:
        """Whether exact search can scan storage rows directly (``search_rows``): an append-only
        index whose tombstones' rows are known."""
        return self.append_only and self._tombstone_rows() is not None

    def search_rows(self, queries: np.ndarray, k: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search among storage rows ``[start, stop)`` only, tombstones skipped (needs
        ``scans_rows``): the whole search, or one slice of it. Scores and ids as ``search``."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        flat = faiss.downcast_index(self.index.index)
        stop = min(stop, flat.ntotal)
        count = max(0, stop - start)
        dead = self._tombstone_rows()
        dead = dead[(dead >= start) & (dead < stop)] - start
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if count - len(dead) <= 0:
            return scores, ids
        stored = faiss.rev_swig_ptr(flat.get_xb(), stop * self.dim).reshape(stop, self.dim)[start:stop]
        similarity = queries @ stored.T
        similarity[:, dead] = -np.inf
        taken = min(k, count - len(dead))
        top = np.argpartition(-similarity, taken - 1, axis=1)[:, :taken]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1), axis=1)
        scores[:, :taken] = np.take_along_axis(similarity, top, axis=1)
        id_map = self.index.id_map
        ids[:, :taken] = [[id_map.at(start + int(position)) for position in row] for row in top]
        return scores, ids

    def _search_exact(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        allowed = np.array([i for i in allowed if int(i) not in self.tombstones], dtype=np.int64)
        if len(allowed) == 0:
            return scores, ids
        similarity = queries @ self.index.reconstruct_batch(allowed).T
        top = np.argsort(-similarity, axis=1)[:, :k]
        taken = top.shape[1]
        scores[:, :taken] = np.take_along_axis(similarity, top, axis=1)
        ids[:, :taken] = allowed[top]
        return scores, ids

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int, spec: IndexSpec, tombstones: set[int]) -> VectorIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if index.d != dim:
            raise ValueError(f"index holds {index.d}-dim vectors, expected {dim}")
        return cls(dim, spec, index, tombstones)
