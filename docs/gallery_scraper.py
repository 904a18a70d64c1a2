"""A sphinx-gallery image scraper for examples that write PNG files themselves (the library draws its pictures
with Pillow, not matplotlib): after each code block, every PNG the block wrote under ``figures/`` of the current
directory is moved into the gallery's image folder and shown."""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx_gallery.scrapers import figure_rst

FIGURES = Path("figures")


def png_scraper(block, block_vars, gallery_conf) -> str:
    """Move the PNGs written since the last block into sphinx-gallery's image paths; return their reST."""
    if not FIGURES.is_dir():
        return ""
    shown = []
    for png, target in zip(sorted(FIGURES.glob("*.png")), block_vars["image_path_iterator"]):
        shutil.move(str(png), target)
        shown.append(target)
    return figure_rst(shown, gallery_conf["src_dir"])


def _get_sg_image_scraper():
    """sphinx-gallery's hook for a scraper named by module (keeps the configuration picklable)."""
    return png_scraper
