"""``avatar ui``: the renderer as a Gradio web app (the ``ui`` extra).

| module | role |
|---|---|
| ``app.py`` | the Blocks and the state behind them (``App``); the API endpoints ``/render``, ``/live``, ``/evaluate`` |
| ``render_tab.py``, ``live_tab.py``, ``evaluate_tab.py`` | one tab each: its handlers and widgets |
| ``common.py`` | the device queue, one-line errors, API signatures, an upload tab's layout |
| ``widgets.py`` | the render options' widgets, made from ``render_options.RENDER_OPTIONS`` |
| ``service.py`` | upload checks, per-session folders, models loaded once |
"""
