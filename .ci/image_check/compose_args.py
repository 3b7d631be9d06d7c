"""Reads deploy/docker-compose.yml for .ci/image-check, which starts its services one by one with
podman (no compose tool that works here: the compose file's other images cannot be pulled, and
its bridge network would send traffic to private addresses). Every setting comes from the file;
the check's overrides are passed explicitly and printed by the check.

  compose_args.py FILE replicas               taskgate services built from deploy/Dockerfile
  compose_args.py FILE stop-seconds SERVICE   stop_grace_period in whole seconds
  compose_args.py FILE redis-url PORT         the replicas' common TASKGATE_REDIS_URL, port replaced
  compose_args.py FILE redis-args             the redis service's command after `redis-server`
  compose_args.py FILE run-args SERVICE [--secret NAME=HOSTFILE]... [--env KEY=VALUE]...
      `podman run` options for SERVICE (no image), NUL-separated: environment (with --env
      overriding or adding keys), read_only, cap_drop, security_opt, mem_limit, init,
      restart, stop_signal, stop_grace_period, healthcheck, and each secret bind-mounted read-only at
      /run/secrets/NAME from HOSTFILE, as compose does with a file secret.
"""

import argparse
import json
import re
import sys
import urllib.parse

import yaml


def seconds(text):
    """'20s', '1m30s', '500ms' -> seconds (float)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise SystemExit(f"compose_args: not a duration: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def environment(svc):
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def replicas(compose):
    services = compose.get("services", {})
    return sorted(n for n, s in services.items() if (s.get("build") or {}).get("dockerfile") == "deploy/Dockerfile")


def run_args(compose, name, secrets, overrides):
    svc = compose["services"][name]
    out = []
    env = {**environment(svc), **overrides}
    for k, v in env.items():
        out += ["--env", f"{k}={v}"]
    if svc.get("read_only"):
        out.append("--read-only")
    for cap in svc.get("cap_drop", []):
        out += ["--cap-drop", cap]
    for opt in svc.get("security_opt", []):
        out += ["--security-opt", opt]
    if svc.get("mem_limit"):
        out += ["--memory", str(svc["mem_limit"])]
    if svc.get("init"):
        out.append("--init")
    if svc.get("restart"):
        out += ["--restart", svc["restart"]]
    if svc.get("stop_signal"):
        out += ["--stop-signal", svc["stop_signal"]]
    if svc.get("stop_grace_period"):
        out += ["--stop-timeout", str(int(seconds(svc["stop_grace_period"])))]
    hc = svc.get("healthcheck") or {}
    if hc.get("test"):
        test = hc["test"]
        if not (isinstance(test, list) and test[0] == "CMD"):
            raise SystemExit(f"compose_args: {name}: healthcheck test must be exec form [CMD, ...], got {test}")
        out += ["--health-cmd", json.dumps(test[1:])]
        for key, flag in (("interval", "--health-interval"), ("timeout", "--health-timeout")):
            if key in hc:
                out += [flag, str(hc[key])]
        if "start_period" in hc:
            out += ["--health-start-period", str(hc["start_period"])]
        if "retries" in hc:
            out += ["--health-retries", str(hc["retries"])]
    for s in svc.get("secrets", []):
        sname = s if isinstance(s, str) else s["source"]
        target = f"/run/secrets/{sname}" if isinstance(s, str) else s.get("target", f"/run/secrets/{sname}")
        if sname not in secrets:
            raise SystemExit(f"compose_args: {name}: no --secret {sname}=HOSTFILE given")
        out += ["--volume", f"{secrets[sname]}:{target}:ro"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("what", choices=["replicas", "stop-seconds", "redis-url", "redis-args", "run-args"])
    ap.add_argument("arg", nargs="?")
    ap.add_argument("--secret", action="append", default=[])
    ap.add_argument("--env", action="append", default=[])
    opts = ap.parse_args()
    with open(opts.file, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    if opts.what == "replicas":
        print("\n".join(replicas(compose)))
    elif opts.what == "stop-seconds":
        print(int(seconds(compose["services"][opts.arg].get("stop_grace_period", "10s"))))
    elif opts.what == "redis-url":
        urls = {environment(compose["services"][r]).get("TASKGATE_REDIS_URL") for r in replicas(compose)}
        if len(urls) != 1 or None in urls:
            raise SystemExit(f"compose_args: the replicas do not share one TASKGATE_REDIS_URL: {urls}")
        u = urllib.parse.urlsplit(urls.pop())
        print(u._replace(netloc=f"{u.hostname}:{opts.arg}").geturl())
    elif opts.what == "redis-args":
        url = urllib.parse.urlsplit(
            environment(compose["services"][replicas(compose)[0]]).get("TASKGATE_REDIS_URL", "")
        )
        cmd = compose["services"][url.hostname]["command"]
        cmd = [str(c) for c in cmd]
        if cmd[:1] != ["redis-server"]:
            raise SystemExit(f"compose_args: the {url.hostname} command does not start with redis-server: {cmd}")
        sys.stdout.write("\0".join(cmd[1:]) + "\0")
    else:
        secrets = dict(s.split("=", 1) for s in opts.secret)
        overrides = dict(e.split("=", 1) for e in opts.env)
        sys.stdout.write("\0".join(run_args(compose, opts.arg, secrets, overrides)) + "\0")


if __name__ == "__main__":
    main()
