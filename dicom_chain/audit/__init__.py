"""Audit trails for compliance: exports in JSON Lines, CSV, FHIR AuditEvent and DICOM/ATNA,
each with a signed proof that it is whole and unaltered, checked offline by ``verify_export``.

Nothing here imports the database layer at module level: an export's render workers load only
what rendering needs."""

from dicom_chain.audit.export import FORMATS, AuditFilter, export, proof_path
from dicom_chain.audit.verify import verify_export

__all__ = ["FORMATS", "AuditFilter", "export", "proof_path", "verify_export"]
