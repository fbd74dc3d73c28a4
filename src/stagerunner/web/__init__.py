"""The dashboard: ``python -m stagerunner web`` (see README, "Dashboard").

Never imported by ``import stagerunner`` or by a node's stages: ``__main__`` imports it
only for the ``web`` command, so no consumer or job child pays for Jinja2.

    server   HTTP, the connection pool, start-up checks      app      routing and rendering
    guard    who may read and act: auth, CSRF, origin, host  views    the read pages
    actions  the buttons, through store's transitions        queries  sql/web_*.sql
    filters  the task list's filters and keyset windows      charts   inline SVG
    format   how values are shown (escaping control characters)
"""
