"""The seed's "current way" with Flask, served by gunicorn sync workers."""
from flask import Flask, jsonify, request

from functions import add, norm

app = Flask(__name__)


@app.post("/add")
def add_endpoint():
    body = request.get_json()
    return jsonify(add(body["a"], body["b"]))


@app.post("/norm")
def norm_endpoint():
    return jsonify(norm(request.get_json()["xs"]))
