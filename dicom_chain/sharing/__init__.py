"""Sharing across institutions: the rules that decide whether anything leaves the node. Pure."""
