"""The HTTP edge: the transparency log's API and its clients."""
