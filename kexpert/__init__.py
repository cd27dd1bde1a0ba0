"""kexpert."""
