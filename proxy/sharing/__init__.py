"""One proxy shared by a team: rate-limit shaping, the metadata cache, the object relay."""
