"""Data sources, one module each, and the image-caption datasets they feed."""
