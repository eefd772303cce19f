"""Train the sample model: a scikit-learn classifier for the iris data set that ships with scikit-learn.

Run it with a Python that has scikit-learn and joblib (the MLServer venv has both, with the same
versions MLServer will load the model with):

    python samples/train_iris.py OUT_DIR

It writes OUT_DIR/model.joblib and OUT_DIR/model.yaml (a Model manifest for `modelplane model load`),
and prints a V2 inference request for two flowers with the classes the model predicts for them.
"""

import json
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MANIFEST = """apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: iris
spec:
  storageUri: {folder}
  requirements: [sklearn]
  memory: 10Mi
  replicas: 1
"""


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    joblib.dump(model, out / "model.joblib")
    (out / "model.yaml").write_text(MANIFEST.format(folder=out))
    flowers = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    request = {"inputs": [{"name": "predict", "shape": [2, 4], "datatype": "FP64", "data": flowers}]}
    print(json.dumps({"request": request, "expected": model.predict(flowers).tolist()}))


if __name__ == "__main__":
    main()
