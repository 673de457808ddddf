"""The DCMTK dictionary shipped for our private block: the code's table, and what dcmdump makes of it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from dicom_chain.carriers.dicom.privatetags import (
    CHAIN_GROUP,
    DCMTK_DICTIONARY,
    ELEMENTS,
    PRIVATE_CREATOR,
    QUERY_ELEMENTS,
    RELEASE_ELEMENTS,
    dcmtk_dictionary,
)
from dicom_chain.config import Settings
from dicom_chain.node import Node

from .conftest import SAMPLE_STUDY
from .peers import require_tool

DCMTK_STANDARD_DICTIONARY = Path("/usr/share/libdcmtk17/dicom.dic")  # Debian's dcmtk package


def dcmtk_env() -> dict[str, str]:
    """DCMTK tools with the standard dictionary and ours, as the README says to run them."""
    standard = DCMTK_STANDARD_DICTIONARY
    if not standard.exists():  # another dcmtk version: libdcmtkNN
        standard = next(Path("/usr/share").glob("libdcmtk*/dicom.dic"))
    return {**os.environ, "DCMDICTPATH": f"{standard}:{DCMTK_DICTIONARY}"}


def test_shipped_dictionary_is_the_codes_table():
    assert DCMTK_DICTIONARY.read_text() == dcmtk_dictionary()


def test_dictionary_lines_name_every_element_with_its_vr():
    entries = {}
    for line in DCMTK_DICTIONARY.read_text().splitlines():
        if line.startswith("#"):
            continue
        tag, vr, keyword, vm, kind = line.split("\t")
        match = re.fullmatch(r'\(([0-9a-f]{4}),"([^"]+)",([0-9a-f]{2})\)', tag)
        assert match, line
        assert int(match[1], 16) == CHAIN_GROUP and match[2] == PRIVATE_CREATOR and kind == "PrivateTag"
        entries[int(match[3], 16)] = (vr, vm, keyword)
    every = ELEMENTS | QUERY_ELEMENTS | RELEASE_ELEMENTS
    assert entries == {k: (v[0], v[1], v[3]) for k, v in every.items()}


def test_dcmdump_names_our_fields_with_the_dictionary(tmp_path):
    dcmdump = require_tool("dcmdump", "dcmtk")
    node = Node.open(Settings(home=tmp_path / "home"))
    try:
        node.ingest_file(sorted(SAMPLE_STUDY.glob("*.dcm"))[0])
        stored = next((tmp_path / "home").rglob("*.dcm"))
    finally:
        node.close()
    plain = subprocess.run([dcmdump, str(stored)], capture_output=True, text=True, timeout=60)
    named = subprocess.run(
        [dcmdump, str(stored)], capture_output=True, text=True, timeout=60, env=dcmtk_env()
    )
    assert named.returncode == 0, named.stderr
    assert "ChainBlockHash" not in plain.stdout  # not DCMTK's own knowledge
    for keyword in ("ChainID", "ChainHeight", "ChainBlockHash", "ChainCanonicalBlock", "ChainKeyID"):
        assert re.search(rf"\(0071,10[0-9a-f]{{2}}\) \w\w .*# .* {keyword}$", named.stdout, re.M), keyword
    assert "(0071,1003) UL 0" in named.stdout  # the first block of the chain, read as a number
