"""A transparency log over the event log: RFC 9162 Merkle tree, proofs, signed checkpoints."""
