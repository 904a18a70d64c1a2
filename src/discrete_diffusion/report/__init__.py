"""``ddiff report`` and pictures of samples: reading a run directory's records (:mod:`.data`), drawing the charts
(:mod:`.plots`), sample grids (:mod:`.grids`) and the PNG + HTML page (:mod:`.page`)."""

from .grids import save_image_grid
from .page import Report, build_report, render_html, render_png, write_report

__all__ = ["Report", "build_report", "render_html", "render_png", "write_report", "save_image_grid"]
