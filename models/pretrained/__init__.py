"""Pretrained models read from installed packages (the ``zoo`` extra), without torch."""
