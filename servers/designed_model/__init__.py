"""A trained model served with its preprocessing and postprocessing (the trainer's designs, seeds/000).

This package runs in two places. The trainer imports it (as ``servers.designed_model``) to evaluate expressions
while training. And the trainer copies it, as the package ``modelplane_designed_model``, into every trained
model's folder, beside ``modelplane_designed_runtime.py`` (servers/designed_model_entry.py) and a
``model-settings.json`` naming ``modelplane_designed_runtime.DesignedModelRuntime``. MLServer imports that entry
module from the model's folder; it imports this package from the same folder under a name of its own (see
there why), so the served model needs nothing from modelplane installed, only what the inference server already
has (numpy, joblib, scikit-learn, mlserver).

Hence its rules: standard library, numpy and joblib only (mlserver in mlserver_runtime.py alone), and only
relative imports inside the package.
"""
