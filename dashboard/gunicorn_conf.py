"""gunicorn settings for Superset (scripts/dashboard.sh passes this file with --config).

preload_app: Superset's app (imports + create_app, ~8 s of CPU here) is built once in the
master before it opens the port, and the workers are forked from it ready to serve. Without
it every worker builds its own after the port is open: the first worker to finish answers
/health while the others are still booting, so a browser that starts then shares the 2 cores
with two app builds (measured: see README, dashboard section).
"""
preload_app = True


def post_fork(server, worker):
    """The metadata-database connections the master opened while building the app must not be
    shared by the forked workers: drop them (without closing the master's) so each worker opens
    its own. (Redis connections: redis-py's pools notice the fork themselves.)"""
    from superset.extensions import db

    with worker.app.wsgi().app_context():
        db.engine.dispose(close=False)
