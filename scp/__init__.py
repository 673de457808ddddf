"""The DICOM service: pynetdicom at the edge, one core call per DIMSE request."""
