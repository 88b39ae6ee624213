"""``avatar ui``: the renderer as a Gradio web app (the ``ui`` extra).

| module | role |
|---|---|
| ``app.py`` | the Blocks: Render, Live and Evaluate tabs; the API endpoints ``/render``, ``/live``, ``/evaluate`` |
| ``widgets.py`` | the render options' widgets, made from ``render_options.RENDER_OPTIONS`` |
| ``service.py`` | upload checks, per-session folders, models loaded once |
"""
