"""Task execution: ``runner`` owns one task's life, ``pool`` claims and heartbeats."""
