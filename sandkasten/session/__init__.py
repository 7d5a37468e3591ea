"""Sessions: the manager, the TTL reaper, workspaces, the image view and the pool."""
