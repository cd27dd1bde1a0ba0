"""Small shared utilities: errors, atomic IO, logging, hashing."""
