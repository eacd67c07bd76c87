"""The demo's model: synthetic customers and a churn pipeline trained on them.

`berth demo`, the local cluster demo, tests and benchmarks train the same model. Imports nothing
of Berth, so any layer may use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when the model is trained, not by every command
    import numpy as np
    import pandas as pd

MODEL = "churn"
PLANS = ("basic", "pro", "enterprise")
_PLAN_EFFECT = {"basic": 0.6, "pro": 0.0, "enterprise": -0.8}

SIGNATURE = {
    "columns": [
        {"name": "tenure_months", "dtype": "int64", "minimum": 0, "maximum": 600},
        {"name": "monthly_charges", "dtype": "float64", "minimum": 0},
        {"name": "plan", "dtype": "string"},
        {"name": "support_calls", "dtype": "int64", "minimum": 0},
    ]
}


def churn_data(rows: int, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    """Synthetic customers; churn is likelier with short tenure, many calls, the basic plan."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure_months": rng.integers(1, 72, rows),
            "monthly_charges": rng.normal(70, 20, rows).clip(15, 150).round(2),
            "plan": rng.choice(PLANS, rows, p=[0.5, 0.35, 0.15]),
            "support_calls": rng.poisson(1.5, rows),
        }
    )
    logit = (
        -0.5
        - 0.06 * frame["tenure_months"]
        + 0.02 * (frame["monthly_charges"] - 70)
        + 0.6 * frame["support_calls"]
        + frame["plan"].map(_PLAN_EFFECT)
    )
    churned = rng.random(rows) < 1 / (1 + np.exp(-logit.to_numpy()))
    return frame, churned.astype(np.int64)


def train(workdir: Path) -> tuple[Path, Path, Path, dict[str, float]]:
    """Fit the pipeline; returns model file, sample file, signature file and test metrics."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from skops.io import dump

    frame, target = churn_data(4000)
    x_train, x_test, y_train, y_test = train_test_split(
        frame, target, test_size=0.25, random_state=0
    )
    numeric = ["tenure_months", "monthly_charges", "support_calls"]
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("numeric", StandardScaler(), numeric),
                        ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                    ]
                ),
            ),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    ).fit(x_train, y_train)
    metrics = {
        "accuracy": round(float(accuracy_score(y_test, pipeline.predict(x_test))), 4),
        "auc": round(float(roc_auc_score(y_test, pipeline.predict_proba(x_test)[:, 1])), 4),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    model_path, sample_path, signature_path = (
        workdir / "churn.skops",
        workdir / "sample.csv",
        workdir / "signature.json",
    )
    dump(pipeline, model_path)
    x_test.head(200).to_csv(sample_path, index=False)
    signature_path.write_text(json.dumps(SIGNATURE, indent=2))
    return model_path, sample_path, signature_path, metrics
