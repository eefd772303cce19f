"""The names the registry's models are served under, as scheduler model names (modelplane/spec/names.py).

* A model's own name, ``<experiment>-<model id>`` (POST .../deploy, and the ``candidate`` alias): one per model.
* An experiment's STABLE name, the experiment's own name made a model name (``houses`` -> ``houses``,
  ``Houses_2`` -> ``houses-2-<hash>``): the ``production`` alias's version is served under it, and a canary is
  an Experiment of that same name in front of it (default: it), so clients call this one name before, during and
  after a promotion. It is in GET .../aliases/production's ``servingName``.
"""

from __future__ import annotations

from modelplane.spec.names import model_name_for


def model_serving_name(experiment: str, model_id: str) -> str:
    """``<experiment>-<model id>``: when the experiment's name has to change (case, dots, length), a short hash
    keeps distinct experiments apart."""
    return model_name_for(f"{experiment}-{model_id}")


def stable_name(experiment: str) -> str:
    return model_name_for(experiment)
