"""FastAPI's floor for ``bench/api_load.py``: the same server answering a constant."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()
ANSWER = {"id": "00000000-0000-0000-0000-000000000000", "status": "pending"}


@app.post("/jobs", status_code=201)
async def enqueue() -> JSONResponse:
    return JSONResponse(ANSWER, status_code=201)


@app.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})
