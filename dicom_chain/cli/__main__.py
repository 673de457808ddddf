"""``python -m dicom_chain.cli``: the same command as the ``dicom-chain`` script."""

from dicom_chain.cli import main

main()
