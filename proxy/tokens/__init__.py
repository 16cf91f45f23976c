"""The gateway's access tokens: the token and the clock (token.py), the lifecycle's states and
its worker (refresher.py), what callers get (manager.py), and the one 401 rule (flow.py).
One fetch is upstream/token_client.py."""
