"""relaunch example: a Flask app started the usual way, with app.run() on a
fixed port, exactly as the dashboards in the seeds do. It is not changed to
run under relaunch:

    relaunch -l 127.0.0.1:5000 --compat werkzeug --stop-signal INT -- python3 examples/flask_app.py

--compat werkzeug sets WERKZEUG_SERVER_FD=3 and WERKZEUG_RUN_MAIN=true, so
werkzeug's run_simple serves relaunch's socket instead of binding port 5000
(the port below is then ignored). Listen on an IPv4 address: app.run()'s
default host 127.0.0.1 makes werkzeug read the fd as IPv4. --stop-signal INT:
werkzeug installs no SIGTERM handler, so TERM kills it mid-request, while INT
stops it between requests.
"""

import os

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return f"{os.getpid()}\n", 200, {"Content-Type": "text/plain", "Connection": "close"}


if __name__ == "__main__":
    app.run(port=5000)
