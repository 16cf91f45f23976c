"""The gateway's access tokens: one fetched (client.py), kept fresh (manager.py)."""
