"""``avatar eval``: lip-sync and video-quality metrics of rendered videos (issue 19)."""
