"""`python -m pipeline serve` (make serve): a local web app to inpaint a photo with any variant.

    inpaint.py  one request: the photo and its mask, the variants that can run, the model's input
                size and back, the composite at the photo's size; models loaded once, locked per variant
    app.py      the server: shared state, the HTTP routes (POST /api/inpaint, GET /api/variants),
                the Gradio page mounted beside them
    page.py     the Gradio page
"""

from pipeline.serve.app import App, build_app, serve

__all__ = ["App", "build_app", "serve"]
