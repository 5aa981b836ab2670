"""Small shared helpers: atomic file writes, JSON lines, hashing, devices, seeding."""
