"""The ``dicom-chain`` command line (Click): one module per command group, no domain logic.

Every option can also come from a ``DICOM_CHAIN_*`` environment variable or a TOML file given
with ``--config``; the command line wins over the environment, which wins over the file. Each
command imports what it runs when it runs, so ``--help`` and ``verify FILES`` never load the
network side.
"""

from __future__ import annotations

import click

from dicom_chain.cli.audit import audit
from dicom_chain.cli.exits import ChainGroup
from dicom_chain.cli.imagechain import export_images, imagechain
from dicom_chain.cli.index import reindex
from dicom_chain.cli.keys import keys
from dicom_chain.cli.log import log_group
from dicom_chain.cli.node import ingest, status
from dicom_chain.cli.options import config_option
from dicom_chain.cli.patient import patient
from dicom_chain.cli.prove import prove_group
from dicom_chain.cli.release import release
from dicom_chain.cli.research import research_export
from dicom_chain.cli.serve import demo, forward, serve
from dicom_chain.cli.sharing import consent, institution, policy_group
from dicom_chain.cli.user import user_group
from dicom_chain.cli.verify import verify


@click.group(
    cls=ChainGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@config_option
@click.version_option(package_name="dicom-chain")
def main() -> None:
    """dicom-chain: a DICOM gateway that chains every image it stores and records every act on it."""


for command in (
    serve,
    forward,
    ingest,
    verify,
    status,
    demo,
    reindex,
    audit,
    keys,
    institution,
    consent,
    policy_group,
    patient,
    research_export,
    release,
    imagechain,
    export_images,
    log_group,
    prove_group,
    user_group,
):
    main.add_command(command)
