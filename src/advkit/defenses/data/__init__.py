"""Training-data sanitisation: drop rows before training (sphere and slab defenses)."""

from advkit.defenses.data.sanitize import METHODS, Sanitization, SphereSlab, SphereSlabSanitizer, sanitize

__all__ = ["METHODS", "Sanitization", "SphereSlab", "SphereSlabSanitizer", "sanitize"]
