#!/usr/bin/env python3
"""Prints docker-compose.yml as a compose implementation resolves it (anchors merged, ${VAR:-default}
interpolated, environment as a mapping), as JSON, for tests/stack.rs: the test starts each service
natively from this, so the compose file stays the one source of ports, environment and commands.

    compose_plan.py REPO_ROOT
"""
import json
import subprocess
import sys

import yaml


def main():
    root = sys.argv[1]
    out = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    plan = yaml.safe_load(out)
    for svc in plan["services"].values():
        env = svc.get("environment") or {}
        if isinstance(env, list):  # KEY=VALUE form
            env = dict(e.split("=", 1) for e in env)
        svc["environment"] = {k: "" if v is None else str(v) for k, v in env.items()}
    print(json.dumps(plan, indent=1))


if __name__ == "__main__":
    main()
