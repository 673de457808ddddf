"""RFC 9162 Merkle tree (dicom_chain/tlog/merkle.py): the reference vectors, every proof at every
size up to a few hundred against a brute-force tree, and random pairs at a million leaves."""

from __future__ import annotations

import hashlib
import random

import pytest

from dicom_chain.tlog import merkle
from dicom_chain.tlog.merkle import Leaves

# Certificate Transparency's reference tree (RFC 6962's test leaves, kept by its successors'
# test data: the roots of its first n leaves, and proofs in it), 0-based leaf indexes here.
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CT_SOURCE = Leaves([merkle.leaf_hash(x) for x in CT_LEAVES])


def test_the_reference_roots():
    for size, expected in enumerate(CT_ROOTS):
        assert merkle.root(CT_SOURCE, size).hex() == expected, size


@pytest.mark.parametrize("index, size, expected", CT_INCLUSION)
def test_the_reference_inclusion_proofs(index, size, expected):
    proof = merkle.inclusion_proof(CT_SOURCE, index, size)
    assert [p.hex() for p in proof] == expected
    root = bytes.fromhex(CT_ROOTS[size])
    assert merkle.verify_inclusion(index, size, CT_SOURCE.leaf_hashes[index], proof, root)
    assert not merkle.verify_inclusion(index, size, CT_SOURCE.leaf_hashes[index], proof, merkle.EMPTY_ROOT)


@pytest.mark.parametrize("first, second, expected", CT_CONSISTENCY)
def test_the_reference_consistency_proofs(first, second, expected):
    proof = merkle.consistency_proof(CT_SOURCE, first, second)
    assert [p.hex() for p in proof] == expected
    roots = bytes.fromhex(CT_ROOTS[first]), bytes.fromhex(CT_ROOTS[second])
    assert merkle.verify_consistency(first, second, proof, *roots)
    if first != second:
        assert not merkle.verify_consistency(first, second, proof, roots[1], roots[1])


# -- a brute-force tree: the RFC's definitions on lists, nothing shared with the module ------------


def mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    if m == len(leaves):
        return [] if whole else [mth(leaves)]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def data(n: int) -> list[bytes]:
    return [b"event %d" % i for i in range(n)]


def test_every_proof_at_every_size_up_to_a_hundred_equals_the_brute_force_trees():
    leaves = data(100)
    src = Leaves([merkle.leaf_hash(x) for x in leaves])
    for size in range(1, 101):
        root = mth(leaves[:size])
        assert merkle.root(src, size) == root
        for index in range(size):
            proof = merkle.inclusion_proof(src, index, size)
            assert proof == path(index, leaves[:size])
            assert merkle.verify_inclusion(index, size, src.leaf_hashes[index], proof, root)
        for first in range(1, size):
            proof = merkle.consistency_proof(src, first, size)
            assert proof == subproof(first, leaves[:size], True)
            assert merkle.verify_consistency(first, size, proof, mth(leaves[:first]), root)


def test_every_proof_verifies_up_to_three_hundred_and_none_verifies_tampered():
    src = Leaves([merkle.leaf_hash(x) for x in data(300)])
    roots = [merkle.root(src, n) for n in range(301)]
    rng = random.Random(9162)
    for size in range(1, 301):
        for index in range(size):
            proof = merkle.inclusion_proof(src, index, size)
            assert merkle.verify_inclusion(index, size, src.leaf_hashes[index], proof, roots[size])
        first = rng.randrange(1, size + 1)
        proof = merkle.consistency_proof(src, first, size)
        assert merkle.verify_consistency(first, size, proof, roots[first], roots[size])
        if proof:
            bad = list(proof)
            bad[rng.randrange(len(bad))] = hashlib.sha256(b"forged").digest()
            assert not merkle.verify_consistency(first, size, bad, roots[first], roots[size])
            assert not merkle.verify_consistency(first, size, proof[:-1], roots[first], roots[size])
        index = rng.randrange(size)
        proof = merkle.inclusion_proof(src, index, size)
        assert not merkle.verify_inclusion(
            index, size, src.leaf_hashes[(index + 1) % 300], proof, roots[size]
        )


class Million:
    """2^20 leaves whose perfect subtrees are built level by level once (a stored tree)."""

    def __init__(self, n: int) -> None:
        level = [merkle.leaf_hash(b"event %d" % i) for i in range(n)]
        self.levels = [level]
        while len(level) > 1:
            level = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self.levels.append(level)

    def perfect(self, level: int, index: int) -> bytes:
        return self.levels[level][index]


def brute_root(tree: Million, size: int) -> bytes:
    """MTH of the first ``size`` leaves by the RFC's recursion over the leaf list (no subtrees)."""
    leaves = tree.levels[0][:size]

    def rec(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        k = merkle.split(hi - lo)
        return merkle.node_hash(rec(lo, lo + k), rec(lo + k, hi))

    return rec(0, size)


def test_random_pairs_at_a_million_leaves():
    n = 1 << 20
    tree = Million(n)
    rng = random.Random(20)
    for _ in range(3):
        second = rng.randrange(n // 2, n + 1)
        first = rng.randrange(1, second)
        roots = brute_root(tree, first), brute_root(tree, second)
        assert merkle.root(tree, second) == roots[1]
        proof = merkle.consistency_proof(tree, first, second)
        assert len(proof) <= 2 * 20
        assert merkle.verify_consistency(first, second, proof, *roots)
        index = rng.randrange(second)
        inclusion = merkle.inclusion_proof(tree, index, second)
        assert len(inclusion) <= 20
        assert merkle.verify_inclusion(index, second, tree.levels[0][index], inclusion, roots[1])
