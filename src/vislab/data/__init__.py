"""Data: image decoding, classification folders, segmentation pairs, the palette codec."""
