"""What the pages draw, made lighter for the browser without changing what it shows: the maps of an image
explanation at the size they carry information at (dashboard/pages/4_Image_explanations.py)."""
from __future__ import annotations

import cv2
import numpy as np

DISPLAY_MAP_SIDE = 112   # the maps drawn small below the heatmap (two panels of ~300 px each)


def display_map(m) -> np.ndarray:
    """A map for one of the small side-by-side panels: area-averaged to at most DISPLAY_MAP_SIDE pixels a side, as
    float32. The full-size float64 maps made each of those two figures over 1 MB for the browser to decode and draw
    (a 224 x 224 case), and the browser drew nothing else meanwhile, the heatmap above included; the computed maps
    (report, cohort measures) keep their size."""
    a = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, dtype=np.float32)
    h, w = a.shape[:2]
    scale = DISPLAY_MAP_SIDE / max(h, w)
    if a.ndim != 2 or scale >= 1:
        return a
    return cv2.resize(a, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def png_source(rgb: np.ndarray) -> str:
    """An RGB uint8 array as a PNG data URI (lossless) for a plotly Image trace's ``source``."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def light_overlay(fig):
    """The heatmap over the image at the same DISPLAY_MAP_SIDE as the panels below, placed over the same pixels
    (each cell spans the image pixels it averages). The maps' own grids are coarser still: the image encoder's
    stages give 7 x 7, 14 x 14 and 28 x 28 cells for the dermatology suite's 224-pixel input (HAM10000: 5 x 7 to
    19 x 25); the map stretched to the image in float made the headline figure ~0.5 MB for the browser to
    receive, decode and draw before anything else."""
    for trace in fig.data:
        if trace.type == "image" and trace.z is not None and trace.source is None:
            # the image itself as a PNG (the same pixels): plotly.js turns an image's z into a PNG itself, pixel by
            # pixel in the page's main thread, before drawing it (~0.3 s on a loaded machine, during which the
            # browser draws nothing else)
            z = np.asarray(trace.z)
            if z.ndim == 3 and z.shape[2] == 3 and z.dtype == np.uint8:
                trace.update(source=png_source(z), z=None)
            continue
        if trace.type != "heatmap" or trace.z is None:
            continue
        z = np.asarray(trace.z, dtype=np.float32)
        small = display_map(z)
        if small.shape != z.shape:
            sy, sx = z.shape[0] / small.shape[0], z.shape[1] / small.shape[1]
            trace.update(z=small, x0=(sx - 1) / 2, dx=sx, y0=(sy - 1) / 2, dy=sy)
    return fig
