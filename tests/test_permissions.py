"""The permission model: per AE title (optionally host-bound) and per certificate subject."""

from __future__ import annotations

import pytest

from dicom_chain.errors import ConfigError
from dicom_chain.permissions import (
    ALLOW_ONLY,
    OPEN,
    Peers,
    Permission,
    parse_subject,
    subject_of,
    table_entries,
)

P = Permission


def test_nothing_configured_lets_anyone_do_all_but_correct():
    peers = Peers.parse()
    assert peers.open
    assert peers.permissions("ANYONE", "10.1.2.3") == OPEN == {P.STORE, P.FIND, P.MOVE, P.GET}


def test_allow_alone_means_store_only():
    """``--allow`` was the whole story before permissions: a modality's entry must not let it query."""
    peers = Peers.parse(allow=["CT1", "MR1@10.0.0.7"])
    assert peers.permissions("CT1", "192.168.1.1") == ALLOW_ONLY == {P.STORE}
    assert peers.permissions("MR1", "10.0.0.7") == {P.STORE}
    assert peers.permissions("MR1", "10.0.0.8") == set()  # bound to another host
    assert peers.permissions("US1", "10.0.0.7") == set()  # not listed
    assert peers.permissions("CT1  ", "1.1.1.1") == {P.STORE}  # AE titles are space padded on the wire


def test_peers_get_what_they_are_granted_and_entries_add_up():
    peers = Peers.parse(allow=["WS1"], peers=["WS1@10.0.0.21=find,move,get", "QA=correct, store", "WS1=FIND"])
    assert peers.permissions("WS1", "10.0.0.21") == {P.STORE, P.FIND, P.MOVE, P.GET}
    assert peers.permissions("WS1", "10.0.0.99") == {P.STORE, P.FIND}  # the host-bound grant stays there
    assert peers.permissions("QA", "1.2.3.4") == {P.CORRECT, P.STORE}


def test_a_listed_certificate_decides_alone_whatever_the_ae_title_claims():
    peers = Peers.parse(peers=["CT1=store"], certs=["CN=reading-room-1,O=Hospital=find,get"])
    cert = {"subject": ((("organizationName", "Hospital"),), (("commonName", "reading-room-1"),))}
    subject = subject_of(cert)
    assert peers.permissions("CT1", "10.0.0.5", subject) == {P.FIND, P.GET}  # not CT1's store
    assert peers.permissions("ANY", "10.0.0.5", subject) == {P.FIND, P.GET}
    other = subject_of({"subject": ((("commonName", "laptop"),),)})
    assert peers.permissions("CT1", "10.0.0.5", other) == {P.STORE}  # unlisted: the AE title's entries
    assert peers.permissions("ANY", "10.0.0.5", other) == set()


def test_subjects_match_whatever_the_order_and_the_spelling_of_attribute_names():
    assert parse_subject("CN=reading-room-1,O=Hospital") == parse_subject("o=Hospital, cn=reading-room-1")
    assert parse_subject("CN=a\\,b,O=H") == {("CN", "a,b"), ("O", "H")}
    assert subject_of({"subject": ((("commonName", "x"),),)}) == parse_subject("CN=x")
    assert subject_of(None) is None and subject_of({}) is None


@pytest.mark.parametrize(
    "kind,entry",
    [
        ("allow", ""),
        ("allow", "@10.0.0.1"),
        ("allow", "A" * 17),
        ("peers", "WS1"),  # no permissions
        ("peers", "WS1="),
        ("peers", "WS1=find,delete"),
        ("peers", "=find"),
        ("certs", "=find"),
        ("certs", "CN=x"),  # reads as subject "CN" granted "x": no such permission
        ("certs", "reading-room=find"),  # a subject is ATTRIBUTE=VALUE pairs
    ],
)
def test_bad_entries_are_config_errors(kind, entry):
    with pytest.raises(ConfigError):
        Peers.parse(**{kind: [entry]})


def test_toml_tables_become_entries():
    peers = {"CT1": {"permissions": ["store"], "host": "10.0.0.7"}, "WS1": {"permissions": ["find", "get"]}}
    assert table_entries(peers, what="peers") == ["CT1@10.0.0.7=store", "WS1=find,get"]
    two_hosts = {"CT2": {"permissions": "store", "host": ["10.0.0.8", "10.0.0.9"]}}
    assert table_entries(two_hosts, what="peers") == ["CT2@10.0.0.8=store", "CT2@10.0.0.9=store"]
    certs = {"CN=rr1,O=Hospital": {"permissions": ["find"]}}
    assert table_entries(certs, what="certs") == ["CN=rr1,O=Hospital=find"]
    for bad in ({"CT1": ["store"]}, {"CT1": {"permissions": []}}, {"CT1": {"permisions": ["store"]}}):
        with pytest.raises(ConfigError):
            table_entries(bad, what="peers")
    with pytest.raises(ConfigError, match="unknown key 'host'"):  # a certificate is not host-bound
        table_entries({"CN=x": {"permissions": ["find"], "host": "10.0.0.1"}}, what="certs")
