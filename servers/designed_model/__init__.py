"""A trained model served with its preprocessing and postprocessing (the trainer's designs, seeds/000).

This package runs in two places. The trainer imports it (as ``servers.designed_model``) to evaluate expressions
while training. And the trainer copies it, as the package ``modelplane_designed_model``, into every trained
model's folder beside a ``model-settings.json`` naming ``mlserver_runtime.DesignedModelRuntime``: MLServer puts
a model's folder on ``sys.path`` while importing its runtime, so the served model needs nothing from modelplane
installed, only what the inference server already has (numpy, joblib, scikit-learn, mlserver).

Hence its rules: standard library, numpy and joblib only (mlserver in mlserver_runtime.py alone), and only
relative imports inside the package. An MLServer process imports the package once: models trained by
different modelplane versions share the copy loaded first, so its record formats only ever grow.
"""
