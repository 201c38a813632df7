"""The operator's screen (``edge-run --view-port``): a live page per node, one tile per camera.

    alert stage --preview PUB (ipc, rate-limited)--> supervisor: ViewFeed --> ViewState --> HTTP (SSE)
    stages --metrics snapshots--> supervisor (already there) ----------------^

- :mod:`edge.view.preview`   the alert stage's side: the newest judged frame of each camera (heatmap
                             thumbnail, verdict, score) at most ``preview_fps`` times a second, and every
                             NotOK / NotDecidable alert, on a private ipc:// PUB socket; never blocks.
- :mod:`edge.view.state`     what the page shows, built from those records and the metrics the
                             supervisor already collects; latest-wins, bounded memory.
- :mod:`edge.view.server`    stdlib HTTP: the page, server-sent events, the JPEGs, and the token-guarded
                             camera API (list / add / remove cameras while the line runs).
- :mod:`edge.view.cameras`   the camera API's checks (the same as ``--source``) and its channel to the
                             capture stage.

Why inside edge-run and not a separate ``edge-view``: the camera API must change the running
pipeline, which only the supervisor can (it owns the stage processes and restarts capture with the
current camera list); the metrics are already in the supervisor; and the preview travels over a
private ipc:// socket, so the view needs no key on the plant network. docs/view.md has the rest.
numpy-free, torch-free: runs on the line.
"""
