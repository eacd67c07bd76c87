"""The BentoML peer of `make bench`: the model's predict as a BentoML API (PEER_MODEL: the joblib
file; PEER_BATCH=1 makes it batchable, up to 32 rows)."""

import os

import bentoml
import joblib
import numpy as np

PATH = os.environ["PEER_MODEL"]
BATCHABLE = os.environ.get("PEER_BATCH") == "1"


@bentoml.service
class Clf:
    def __init__(self) -> None:
        self.model = joblib.load(PATH)

    @bentoml.api(batchable=BATCHABLE, max_batch_size=32)
    def predict(self, input: np.ndarray) -> np.ndarray:
        return self.model.predict(input)
