"""Object storage as the edge grants it: signed URLs per turn (remote.py), chunk MACs (chunk_mac.py)."""
