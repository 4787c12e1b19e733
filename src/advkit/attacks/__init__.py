"""Attacks: evasion, extraction, poisoning, privacy."""
