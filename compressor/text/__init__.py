"""Text units shared by compression (what to keep) and retrieval (where to cut documents)."""
