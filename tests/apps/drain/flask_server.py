"""Flask's app.run(port=P) as it is usually written (werkzeug binds
127.0.0.1; no signal handler), 30 ms of work per request. Answers its pid.
Usage: flask_server.py PORT"""
import os
import sys
import time

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    time.sleep(0.03)
    return f"{os.getpid()}\n"


if __name__ == "__main__":
    app.run(port=int(sys.argv[1]))
