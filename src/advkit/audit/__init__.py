"""The audit: one command from model to a trustworthy report."""
