"""Defenses: adversarial training, backdoor detection and repair, input purification."""
