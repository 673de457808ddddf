"""Settings: every field declared once, carried whole to the forward process, checked on the way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_chain.config import Settings, setting_fields
from dicom_chain.errors import ConfigError

EVERY_FIELD_SET = Settings(
    home=Path("h"),
    db="postgresql+psycopg://u:secret@db/ledger",
    storage=Path("s"),
    key_file=Path("k/node.key"),
    institution="St. Élise",
    policy=Path("policy.toml"),
    policy_now="2026-12-01T00:00:00Z",
    ae_title="GW",
    accept_called_ae=("OLD_GW",),
    forward=("PACS@10.0.0.1:104", "ARCH@10.0.0.2:11112"),
    forward_workers=7,
    forward_max_refusals=9,
    host="127.0.0.1",
    port=4242,
    allow=("CT1", "MR1@10.0.0.7"),
    peers=("WS1@10.0.0.21=find,move,get",),
    certs=("CN=reading-room-1,O=Hospital=find,get",),
    max_associations=20,
    max_associations_per_host=3,
    pdu_deadline=5,
    tls_handshake_deadline=4,
    max_associate_request=65_536,
    move_destinations=("WS1@10.0.0.21:104",),
    serve_altered="warn",
    audit_syslog="tls://arr:6514",
    audit_syslog_ca=Path("ca.pem"),
    metrics_port=9110,
    metrics_host="10.0.0.5",
    http_port=8443,
    http_host="10.0.0.6",
    http_tls_cert=Path("h.pem"),
    http_tls_key=Path("h.key"),
    console_url="https://pacs.example:8443",
    witness_quorum=2,
    checkpoint_interval=60,
    tsa="https://tsa.example/tsr",
    spool=Path("sp"),
    max_instance_bytes=1 << 30,
    spool_memory_bytes=1 << 20,
    tls_cert=Path("c.pem"),
    tls_key=Path("c.key"),
    tls_ca=Path("peers.pem"),
    log_level="debug",
    log_file=Path("gw.log"),
    log_format="json",
)


def test_every_field_differs_from_its_default_in_the_sample():
    """So that the round trip below covers every field, including ones added later."""
    assert all(getattr(EVERY_FIELD_SET, f.name) != f.default for f in setting_fields())


def test_json_round_trip_keeps_every_field_and_its_type():
    again = Settings.from_json(EVERY_FIELD_SET.to_json())
    assert again == EVERY_FIELD_SET
    assert isinstance(again.home, Path) and isinstance(again.forward, tuple)
    assert Settings.from_json(Settings().to_json()) == Settings()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"colour": "blue"}),
        json.dumps({"port": "11112"}),
        json.dumps({"port": True}),
        json.dumps({"forward": [1]}),
        json.dumps({"home": None}),
        json.dumps({"port": 0}),
    ],
)
def test_from_json_refuses_what_is_not_settings(text):
    with pytest.raises(ConfigError):
        Settings.from_json(text)


def test_bounds_are_checked_wherever_settings_come_from():
    with pytest.raises(ConfigError, match="--forward-workers 0"):
        Settings(forward_workers=0)
    with pytest.raises(ConfigError, match="--port 70000"):
        Settings(port=70000)


def test_every_field_has_help_an_option_and_an_environment_variable():
    options = [f.option for f in setting_fields()]
    assert len(set(options)) == len(options)
    for f in setting_fields():
        assert f.meta.help.endswith(".")
        assert f.envvar == "DICOM_CHAIN_" + f.option[2:].replace("-", "_").upper()
    assert {f.name: f.option for f in setting_fields()}["move_destinations"] == "--move-destination"


def test_key_beside_the_sqlite_file_else_in_home(tmp_path: Path):
    assert Settings(home=tmp_path).key_path == tmp_path / "node.key"
    assert Settings(db=f"sqlite:///{tmp_path}/x/l.db").key_path == tmp_path / "x" / "node.key"
    assert Settings(db=f"sqlite:///{tmp_path}/x/l.db").sqlite_file == tmp_path / "x" / "l.db"
    postgres = Settings(home=tmp_path, db="postgresql+psycopg://u@h/d")
    assert postgres.key_path == tmp_path / "node.key" and postgres.sqlite_file is None
    assert Settings(key_file=tmp_path / "k").key_path == tmp_path / "k"


def test_serve_altered_is_refuse_or_warn():
    assert Settings().serve_altered == "refuse"
    with pytest.raises(ConfigError, match="--serve-altered 'maybe': must be one of refuse, warn"):
        Settings(serve_altered="maybe")
