"""Backdoor defenses: model inspection (Neural Cleanse) and repair."""
