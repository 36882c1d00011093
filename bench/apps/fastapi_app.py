"""The seed's "current way" with FastAPI: a typed request model per function, served by uvicorn."""
from fastapi import FastAPI
from pydantic import BaseModel

from functions import add, norm

app = FastAPI()


class AddArgs(BaseModel):
    a: float
    b: float


class NormArgs(BaseModel):
    xs: list[float]


@app.post("/add")
async def add_endpoint(args: AddArgs) -> float:
    return add(args.a, args.b)


@app.post("/norm")
async def norm_endpoint(args: NormArgs) -> float:
    return norm(args.xs)
