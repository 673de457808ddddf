"""The DICOM service: pynetdicom at the edge, one core call per DIMSE request."""

from pynetdicom import _config

# Send stored files from disk as they are (forwarding, C-MOVE, C-GET) instead of decoding and
# re-encoding each one: every sender here picks a context of the file's own transfer syntax for
# a path, and hands pynetdicom a decoded dataset only when it must convert.
_config.STORE_SEND_CHUNKED_DATASET = True
