"""`python -m pipeline serve` (make serve): a local web app to inpaint a photo with any variant.

Each module imports only the ones listed above it (tests/test_serve.py checks there is no circle):

    inpaint.py  one request: the photo and its mask, the variants that can run, the model's input
                size and back, the composite at the photo's size; models loaded once, locked per variant
    app.py      what every request shares (variants, models, the competition's images) and the HTTP
                routes (POST /api/inpaint, GET /api/variants); imports inpaint
    page.py     the Gradio page on that shared state; imports app, inpaint
    server.py   building (routes + page on one FastAPI app) and running it; imports app, page, inpaint
"""

from pipeline.serve.app import App
from pipeline.serve.server import build_app, serve

__all__ = ["App", "build_app", "serve"]
