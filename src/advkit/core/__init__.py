"""Core types: the threat model, the model handle and its views, the results.

- :mod:`advkit.core.threat`: :class:`Threat` (norm, budget, bounds, goal, knowledge).
- :mod:`advkit.core.handle`: :class:`ModelInfo`, :class:`NormalizedModel` and
  :class:`ModelHandle`, which owns normalization, device and eval mode.
- :mod:`advkit.core.view`: :class:`ModelView`, the knowledge-restricted face an attack
  works through, counting every query per original row against its budget.
- :mod:`advkit.core.checks`: :func:`check_images` and :func:`check_labels`.
- :mod:`advkit.core.results`: :class:`AttackResult`, :class:`PoisonedData`,
  :class:`DetectionReport`.

Every public name is importable from ``advkit.core`` itself.
"""

from advkit.core.checks import check_images, check_labels
from advkit.core.handle import ModelHandle, ModelInfo, NormalizedModel
from advkit.core.results import AttackResult, DetectionReport, PoisonedData
from advkit.core.threat import GOALS, KNOWLEDGE_LEVELS, NORMS, Goal, Knowledge, Norm, Threat
from advkit.core.view import UNLIMITED, ModelView, Observer
from advkit.errors import AdvkitError, KnowledgeError, QueryBudgetExceeded

__all__ = [
    "GOALS",
    "KNOWLEDGE_LEVELS",
    "NORMS",
    "UNLIMITED",
    "AdvkitError",
    "AttackResult",
    "DetectionReport",
    "Goal",
    "Knowledge",
    "KnowledgeError",
    "ModelHandle",
    "ModelInfo",
    "ModelView",
    "Norm",
    "NormalizedModel",
    "Observer",
    "PoisonedData",
    "QueryBudgetExceeded",
    "Threat",
    "check_images",
    "check_labels",
]
