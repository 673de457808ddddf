"""The DICOM carrier: canonical content hash, our private block, splicing into received bytes."""
