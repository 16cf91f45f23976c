"""Serving: the app, the connection protocol, background tasks, reload, the process's life."""
