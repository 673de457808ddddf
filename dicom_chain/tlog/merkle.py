"""The Merkle tree of RFC 9162 section 2.1, and its inclusion and consistency proofs.

Hashing is the RFC's: a leaf is SHA-256(0x00 || leaf), an interior node SHA-256(0x01 || left ||
right), and a tree of n > 1 leaves splits at k, the largest power of two below n. Proofs are the
RFC's PATH and PROOF (2.1.3.1, 2.1.4.1), lists of 32-byte hashes any RFC 9162 verifier checks,
and the verifiers are the RFC's (2.1.3.2, 2.1.4.2). Pure: no I/O.

A proof needs the hashes of subtrees, never the leaves themselves. Every left subtree in the RFC's
tree is perfect (a power of two of leaves) and aligned to its size, so a proof is computed from a
``Subtrees`` source that answers one such hash a lookup (tlog/store.py keeps them in the database,
two rows a leaf), with O(log n) of them a proof at any size. ``Leaves`` answers from leaf hashes
in memory, for tests and small trees.

pymerkle (7.0) hashes the same trees, but its proofs are its own format (paths that include the
leaf, a rule and a subset), not RFC 9162's, and it stores trees in memory or its own SQLite file
only: neither reaches the node's database or another log's verifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 2.1.1: MTH({}) = HASH()
HASH_SIZE = 32


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """k: the largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class Subtrees(Protocol):
    def perfect(self, level: int, index: int) -> bytes:
        """The hash of leaves [index * 2^level, (index + 1) * 2^level), all present."""
        ...


class Leaves:
    """Subtree hashes computed from leaf hashes in memory (each computed once)."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.leaf_hashes = list(leaf_hashes)
        self.perfect = lru_cache(maxsize=None)(self._perfect)  # type: ignore[method-assign]

    def _perfect(self, level: int, index: int) -> bytes:
        if level == 0:
            return self.leaf_hashes[index]
        return node_hash(self.perfect(level - 1, 2 * index), self.perfect(level - 1, 2 * index + 1))


def range_hash(src: Subtrees, lo: int, hi: int) -> bytes:
    """MTH of leaves [lo, hi) of the tree, as the RFC's recursion splits it."""
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and lo % n == 0:
        return src.perfect(n.bit_length() - 1, lo // n)
    k = split(n)
    return node_hash(range_hash(src, lo, lo + k), range_hash(src, lo + k, hi))


def root(src: Subtrees, size: int) -> bytes:
    return range_hash(src, 0, size)


def inclusion_proof(src: Subtrees, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) (RFC 9162 2.1.3.1); ValueError unless 0 <= index < size."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    return _path(src, index, 0, size)


def _path(src: Subtrees, m: int, lo: int, hi: int) -> list[bytes]:
    n = hi - lo
    if n == 1:
        return []
    k = split(n)
    if m < k:
        return [*_path(src, m, lo, lo + k), range_hash(src, lo + k, hi)]
    return [*_path(src, m - k, lo + k, hi), range_hash(src, lo, lo + k)]


def consistency_proof(src: Subtrees, first: int, second: int) -> list[bytes]:
    """PROOF(first, D[second]) (RFC 9162 2.1.4.1): empty when first is 0 or second;
    ValueError unless 0 <= first <= second."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from {first} to {second}")
    if first in (0, second):
        return []
    return _subproof(src, first, 0, second, True)


def _subproof(src: Subtrees, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if whole else [range_hash(src, lo, hi)]
    k = split(n)
    if m <= k:
        return [*_subproof(src, m, lo, lo + k, whole), range_hash(src, lo + k, hi)]
    return [*_subproof(src, m - k, lo + k, hi, False), range_hash(src, lo, lo + k)]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """RFC 9162 2.1.3.2."""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root_hash


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> bool:
    """RFC 9162 2.1.4.2; a tree is consistent with itself (an empty proof, equal roots) and an
    empty tree with any (an empty proof)."""
    if not 0 <= first <= second or any(len(p) != HASH_SIZE for p in proof):
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_root and sr == second_root and sn == 0
