"""Notebook widgets: result galleries with drill-down, job progress, activation histograms.

    from everest_magic.widgets import Gallery, JobProgress
    Gallery(session.topk("conv2", [5, 17], k=12), session)   # display it in a cell
    JobProgress(session.build_index(["conv2"]))
"""
from .gallery import Gallery
from .histogram import histogram_png, neuron_histogram, result_histogram
from .progress import JobProgress
from .static import static_html
from .thumbs import is_image, snippet, thumbnail_png

__all__ = ["Gallery", "JobProgress", "thumbnail_png", "static_html", "snippet", "is_image",
           "histogram_png", "neuron_histogram", "result_histogram"]
