"""Query/Retrieve: PS3.4 matching, identifiers, the index and its rebuild, one run per request."""
