"""The bare FastAPI baseline of `make bench`: one route that predicts on the event loop, with no
authentication, validation, metrics or logging; the floor any server's per-request cost sits on.

PEER_MODEL names the joblib file; GET /ready answers once it is loaded.
"""

import os

import joblib
import numpy as np
from fastapi import FastAPI, Request

model = joblib.load(os.environ["PEER_MODEL"])
app = FastAPI()


@app.get("/ready")
async def ready() -> dict[str, int]:
    return {"ok": 1}


@app.post("/predict")
async def predict(request: Request) -> dict[str, list[int]]:
    body = await request.json()
    return {"predictions": model.predict(np.asarray(body["data"], dtype=np.float32)).tolist()}
