"""Data: sources, downloads, manifests and splitting, decoding, transforms."""
