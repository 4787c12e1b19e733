"""MITRE ATLAS (5.x) ids for every attack and mitigation the audit runs.

Techniques: AML.T0015 Evade AI Model; AML.T0043.000/.001/.002 craft adversarial data
by white-box optimization / black-box optimization / black-box transfer; AML.T0043.004
insert backdoor trigger; AML.T0020 poison training data; AML.T0018.000 poison AI
model; AML.T0018.001 modify AI model architecture; AML.T0024.000 infer training data
membership; AML.T0024.002 extract AI model; AML.T0011.000 unsafe AI artifacts.
Mitigations: AML.M0003 model hardening; AML.M0015 adversarial input detection;
AML.M0007 sanitize training data; AML.M0008 validate AI model; AML.M0014 verify AI
artifacts.
"""

from __future__ import annotations

TECHNIQUES = {
    "AML.T0015": "Evade AI Model",
    "AML.T0043.000": "Craft Adversarial Data: White-Box Optimization",
    "AML.T0043.001": "Craft Adversarial Data: Black-Box Optimization",
    "AML.T0043.002": "Craft Adversarial Data: Black-Box Transfer",
    "AML.T0043.004": "Craft Adversarial Data: Insert Backdoor Trigger",
    "AML.T0020": "Poison Training Data",
    "AML.T0018.000": "Manipulate AI Model: Poison AI Model",
    "AML.T0018.001": "Manipulate AI Model: Modify AI Model Architecture",
    "AML.T0024.000": "Exfiltration via AI Inference API: Infer Training Data Membership",
    "AML.T0024.002": "Exfiltration via AI Inference API: Extract AI Model",
    "AML.T0011.000": "User Execution: Unsafe AI Artifacts",
}

MITIGATIONS = {
    "AML.M0003": "Model Hardening",
    "AML.M0015": "Adversarial Input Detection",
    "AML.M0007": "Sanitize Training Data",
    "AML.M0008": "Validate AI Model",
    "AML.M0014": "Verify AI Artifacts",
}

# What each audit component maps to: technique ids for attacks, mitigation ids for defenses.
COMPONENTS: dict[str, list[str]] = {
    "evasion:white": ["AML.T0015", "AML.T0043.000"],
    "evasion:score": ["AML.T0015", "AML.T0043.001"],
    "evasion:label": ["AML.T0015", "AML.T0043.001"],
    "poisoning": ["AML.T0020", "AML.T0018.000", "AML.T0043.004"],
    "backdoor-in-model": ["AML.T0018.000", "AML.T0043.004"],
    "adv-pgd": ["AML.M0003"],
    "adv-fast": ["AML.M0003"],
    "trades": ["AML.M0003"],
    "neural-cleanse": ["AML.M0008"],
    "randomized-smoothing": ["AML.M0003"],
    "gaussian": ["AML.M0003"],
    "smoothadv": ["AML.M0003"],
    "macer": ["AML.M0003"],
    "nc-unlearn": ["AML.M0003"],
    "nc-prune": ["AML.M0003"],
    "nc-filter": ["AML.M0015"],
    "provenance": ["AML.M0014"],
}


def ids_for(component: str) -> list[dict[str, str]]:
    """``[{id, name}]`` for a component name (empty when unknown)."""
    out = []
    for atlas_id in COMPONENTS.get(component, []):
        name = TECHNIQUES.get(atlas_id) or MITIGATIONS.get(atlas_id, "")
        out.append({"id": atlas_id, "name": name})
    return out
