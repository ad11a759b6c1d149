"""Memory planning: buffer layout from consecutive-ones constraints."""
