"""Cross-file rules of deploy/ and `taskgate --check-config` per deployment (steps 5 and 6 of
.ci/deploy-check, which runs this file after its tool checks; see that script's header).

Reads deploy/, config/taskgate.toml and the environment the wrapper sets:
  DEPLOY_CHECK_WORK  a scratch directory (removed by the wrapper)
  DEPLOY_CHECK_BIN   a taskgate binary to run --check-config with, or empty to skip that part
Prints one `ok:` or `PROBLEM:` line per rule; exits 1 when any rule found a problem.
Linted and format-checked by the wrapper with ruff (settings: .ci/ruff.toml).
"""

import base64
import itertools
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.parse

import yaml

# The repository root: this file is .ci/deploy_check.py.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.environ["DEPLOY_CHECK_WORK"]
problems = []


def bad(msg):
    problems.append(msg)
    print(f"  PROBLEM: {msg}")


def ok(msg):
    print(f"  ok: {msg}")


def read(p):
    with open(os.path.join(ROOT, p), encoding="utf-8") as f:
        return f.read()


def seconds(text):
    """'250ms', '30s', '5m', '1h30m', '0', 45 -> seconds (float)."""
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    if text == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


# ---- the configuration's keys: config/taskgate.toml documents every key (commented out) ----
config_text = read("config/taskgate.toml")
KEYS = set(re.findall(r"^#?[ \t]*([a-z][a-z0-9_]*)[ \t]*=", config_text, re.MULTILINE))
# The key itself is refused in a file by design (SPEC): only its variable exists.
ENV_ONLY = {"TASKGATE_API_KEY"}
if len(KEYS) < 20 or "listen" not in KEYS or "drain_timeout" not in KEYS:
    bad(f"could not read the keys of config/taskgate.toml (found {sorted(KEYS)})")
else:
    ok(f"config/taskgate.toml documents {len(KEYS)} keys")

DEFAULTS = {"shutdown_grace": "0s", "drain_timeout": "10s"}

# ---- every TASKGATE_* name anywhere in deploy/ is a real setting -------------------------
names = {}
for dirpath, _, files in os.walk(os.path.join(ROOT, "deploy")):
    for fn in files:
        p = os.path.relpath(os.path.join(dirpath, fn), ROOT)
        if p.startswith("deploy/secrets/"):
            continue
        for n in re.findall(r"\bTASKGATE_[A-Z0-9_]*[A-Z0-9]\b", read(p)):
            names.setdefault(n, set()).add(p)
for n, where in sorted(names.items()):
    if n not in ENV_ONLY and n[len("TASKGATE_") :].lower() not in KEYS:
        bad(f"{n} (in {', '.join(sorted(where))}) is not a key of config/taskgate.toml")
ok(f"{len(names)} TASKGATE_* names in deploy/ all map to config/taskgate.toml keys")

# ---- Dockerfile ----------------------------------------------------------------------------
df = read("deploy/Dockerfile")
lines = []
for raw in re.sub(r"\\\n", " ", df).splitlines():
    s = raw.strip()
    if s and not s.startswith("#"):
        lines.append(s)
stages = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
final = lines[stages[-1] :] if stages else []
args = {m.group(1): m.group(2) for ln in lines if (m := re.match(r"ARG (\w+)=(\S+)", ln))}
final_from = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), final[0].split()[1]) if final else ""
image_env = {}
for ln in final:
    if ln.upper().startswith("ENV "):
        image_env.update(dict(re.findall(r"(\w+)=(\S+)", ln[4:])))
if not final_from.startswith("gcr.io/distroless/") or not final_from.endswith(":nonroot"):
    bad(f"runtime image is {final_from!r}, expected a distroless :nonroot image")
if any(ln.upper().startswith("RUN ") for ln in final):
    bad("the runtime stage has a RUN line (the runtime image has no shell)")
if not any(re.search(r"cargo build --release --locked", ln) for ln in lines):
    bad("no `cargo build --release --locked` in the Dockerfile")
if 'ENTRYPOINT ["/taskgate"]' not in final:
    bad('ENTRYPOINT must be the exec form ["/taskgate"]')
if "STOPSIGNAL SIGTERM" not in final:
    bad("STOPSIGNAL SIGTERM missing")
expose = {p for ln in final if ln.upper().startswith("EXPOSE ") for p in ln.split()[1:]}
if expose != {"8080", "9090"}:
    bad(f"EXPOSE {sorted(expose)}, expected 8080 9090")
user = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
if not user or user[-1].split(":")[0] in ("0", "root"):
    bad("the runtime stage must end with a non-root USER")
# The image has no shell and no curl: the health check is taskgate's own, in exec form.
health = [ln for ln in final if ln.upper().startswith("HEALTHCHECK ")]
if len(health) != 1 or not re.search(r'CMD \["/taskgate", "--healthcheck"\]$', health[0]):
    bad(f'expected one HEALTHCHECK ... CMD ["/taskgate", "--healthcheck"], got {health}')
if image_env.get("TASKGATE_LISTEN") != "0.0.0.0:8080" or image_env.get("TASKGATE_ADMIN_LISTEN") != "0.0.0.0:9090":
    bad(f"image ENV listeners {image_env}, expected 0.0.0.0:8080 and 0.0.0.0:9090")
ignore = read("deploy/Dockerfile.dockerignore").split()
for ln in lines:
    m = re.match(r"COPY (?!--from)(.+) \S+$", ln)
    if m:
        for src in m.group(1).split():
            # target/...: a build output (BINARY_FROM=prebuilt copies the host-built binary).
            if not os.path.exists(os.path.join(ROOT, src)) and not src.startswith("target/"):
                bad(f"COPY {src}: not in the repository (context = repository root)")
            if f"!{src}" not in ignore and f"!{src}/" not in ignore:
                bad(f"COPY {src}: excluded by deploy/Dockerfile.dockerignore")
# Where /taskgate comes from: ARG BINARY_FROM names a stage (`build` by default, `prebuilt` for a
# host-built binary), a stage `binary` is FROM it, and the runtime stage copies from `binary`.
stage_names = {ln.split()[3].lower() for ln in lines if re.match(r"FROM \S+ AS \S+$", ln, re.IGNORECASE)}
if args.get("BINARY_FROM") != "build" or not {"build", "prebuilt", "binary"} <= stage_names:
    bad(f"Dockerfile: expected ARG BINARY_FROM=build and stages build, prebuilt, binary; got {sorted(stage_names)}")
if not any(re.fullmatch(r"FROM \$\{BINARY_FROM\} AS binary", ln, re.IGNORECASE) for ln in lines):
    bad("Dockerfile: no `FROM ${BINARY_FROM} AS binary` stage")
if "COPY --from=binary /taskgate /taskgate" not in final:
    bad("Dockerfile: the runtime stage must COPY --from=binary /taskgate /taskgate")
# The image is built without the demo (SPEC): every cargo build leaves the default features out.
for ln in lines:
    if "cargo build" in ln and ("--no-default-features --features redis,mimalloc" not in ln or "demo" in ln):
        bad(f"Dockerfile: `{ln[:80]}...` must build with --no-default-features --features redis,mimalloc (no demo)")
ok(
    f"Dockerfile: runtime {final_from}, user {user[-1] if user else '?'}, EXPOSE 8080 9090, "
    "exec ENTRYPOINT, HEALTHCHECK by taskgate --healthcheck, STOPSIGNAL SIGTERM, no RUN in the runtime stage, "
    "COPY sources in context; BINARY_FROM build|prebuilt; cargo build without default features (no demo)"
)


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def stop_budget(env, what, budget_s):
    need = seconds(env.get("TASKGATE_SHUTDOWN_GRACE", DEFAULTS["shutdown_grace"])) + seconds(
        env.get("TASKGATE_DRAIN_TIMEOUT", DEFAULTS["drain_timeout"])
    )
    if not budget_s > need:
        bad(f"{what}: stop timeout {budget_s}s is not above SHUTDOWN_GRACE + DRAIN_TIMEOUT = {need}s")
    else:
        ok(f"{what}: stop timeout {budget_s:g}s > grace + drain {need:g}s")


scenarios = []  # (name, env, argv) for the binary check


def size_bytes(text, redis=False):
    """'64mb' (Redis: 1mb = 2^20, 1m = 10^6), '128Mi', '128M', '128m' (compose: binary) -> bytes."""
    m = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", str(text).strip())
    if not m:
        raise ValueError(f"not a size: {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    if redis:
        scale = {"": 1, "b": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
        return n * scale[unit.lower()]
    scale = {
        "": 1,
        "b": 1,
        "k": 2**10,
        "m": 2**20,
        "g": 2**30,
        "ki": 2**10,
        "mi": 2**20,
        "gi": 2**30,
        "kb": 2**10,
        "mb": 2**20,
        "gb": 2**30,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
    }
    if unit in ("K", "M", "G"):  # Kubernetes decimal suffixes
        return n * {"K": 10**3, "M": 10**6, "G": 10**9}[unit]
    return n * scale[unit.lower()]


# Memory one client connection may hold at worst: an unfinished request head of just under
# the 32 KiB limit costs 40.8 KB of RSS (2000 such connections, 8.6 -> 90.1 MB; a silent one
# 7.3 KB), and the cache at its bound 1.25 x TASKGATE_CACHE_MAX_BYTES + 16 MiB
# (docs/security.md, "Connection caps"; bench/memory.sh).
PER_CONNECTION = 41 * 2**10
# The admin listener's own cap, beside the public one, read from its one definition.
_admin_cap = re.search(r"pub const MAX_CONNECTIONS: usize = (\d+);", read("src/admin/mod.rs"))
ADMIN_CONNECTIONS = int(_admin_cap.group(1)) if _admin_cap else 0
if not _admin_cap:
    bad("src/admin/mod.rs: no `pub const MAX_CONNECTIONS: usize = N;` to count the admin listener by")


def memory_budget(what, env, conf, limit):
    """A deployment's memory limit must hold a full cache and every connection it allows."""
    try:
        cache = size_bytes(env.get("TASKGATE_CACHE_MAX_BYTES") or conf.get("cache_max_bytes") or "64MiB")
        conns = int(env.get("TASKGATE_MAX_CONNECTIONS") or conf.get("max_connections") or 10000)
        have = size_bytes(limit) if limit is not None else None
    except (ValueError, KeyError, TypeError) as e:
        bad(f"{what}: cannot read the memory budget's figures ({e})")
        return
    need = 1.25 * cache + 16 * 2**20 + (conns + ADMIN_CONNECTIONS) * PER_CONNECTION
    if have is None:
        bad(f"{what}: no memory limit to check the budget against")
    elif need > have:
        bad(
            f"{what}: memory limit {limit} < a full cache ({cache >> 20} MiB x 1.25 + 16 MiB) and "
            f"{conns} + {ADMIN_CONNECTIONS} (admin) connections x 41 KiB = {need / 2**20:.0f} MiB: "
            "lower max_connections"
        )
    else:
        ok(
            f"{what}: memory limit {limit} holds a full cache and {conns} + {ADMIN_CONNECTIONS} (admin) "
            f"connections ({need / 2**20:.0f} MiB)"
        )


def redis_flags(argv, what):
    """Check a redis-server command line: persistence off, a maxmemory, allkeys-lru.
    Returns maxmemory in bytes (or None)."""
    argv = [str(a) for a in argv]
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    if argv[:1] != ["redis-server"]:
        bad(f"{what}: the command must start with redis-server, got {argv[:1]}")
    if pairs.get("--save") != "":
        bad(f'{what}: RDB snapshots must be off (--save ""), got {pairs.get("--save")!r}')
    if pairs.get("--appendonly") != "no":
        bad(f"{what}: the append-only file must be off (--appendonly no)")
    if pairs.get("--maxmemory-policy") != "allkeys-lru":
        bad(f"{what}: --maxmemory-policy allkeys-lru expected, got {pairs.get('--maxmemory-policy')!r}")
    mm = pairs.get("--maxmemory")
    if not mm:
        bad(f"{what}: no --maxmemory (an uncapped cache grows until the memory limit kills it)")
        return None
    return size_bytes(mm, redis=True)


def pinned_redis_image(image, what):
    m = re.fullmatch(r"(?:docker\.io/)?(?:library/)?redis:(\d+\.\d+\.\d+)(-\w+)?(@sha256:[0-9a-f]{64})?", str(image))
    if not m:
        bad(f"{what}: image {image!r} is not the official redis image pinned to x.y.z")
    return m


def url_parts(url, what):
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("redis", "rediss") or not u.hostname:
        bad(f"{what}: {u.scheme}://... is not a redis:// or rediss:// URL with a host")
        return None
    return u.hostname, u.port or 6379


# ---- Kubernetes ----------------------------------------------------------------------------
SIDECAR_FILE, REDIS_FILE = "taskgate-sidecar.yaml", "redis.yaml"
docs = []  # (file name, document)
for fn in sorted(os.listdir(os.path.join(ROOT, "deploy/kubernetes"))):
    if fn.endswith((".yaml", ".yml")):
        docs += [(fn, d) for d in yaml.safe_load_all(read(f"deploy/kubernetes/{fn}")) if d]
if {fn for fn, _ in docs} != {SIDECAR_FILE, REDIS_FILE}:
    bad(f"deploy/kubernetes/ should hold {SIDECAR_FILE} and {REDIS_FILE}, found {sorted({fn for fn, _ in docs})}")
by_kind = {}
for _fn, d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
file_of = {id(d): fn for fn, d in docs}
secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
cms = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}


def secret_values(sec):
    vals = {k: base64.b64decode(v).decode() for k, v in sec.get("data", {}).items()}
    vals.update(sec.get("stringData", {}))
    return vals


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_refs(spec):
    """Every Secret / ConfigMap a pod spec needs: (kind, name, key or None, optional, where)."""
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        for e in c.get("env", []):
            vf = e.get("valueFrom", {})
            for kind, k in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if k in vf:
                    r = vf[k]
                    yield kind, r["name"], r.get("key"), r.get("optional") is True, f"{c['name']} env {e['name']}"
        for ef in c.get("envFrom", []):
            for kind, k in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if k in ef:
                    yield kind, ef[k]["name"], None, ef[k].get("optional") is True, f"{c['name']} envFrom"
    for v in spec.get("volumes", []):
        for kind, k, name_key in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            if k in v:
                src = v[k]
                keys = [i["key"] for i in src.get("items", [])] or [None]
                for key in keys:
                    yield kind, src[name_key], key, src.get("optional") is True, f"volume {v['name']}"


def resolves_in(fn, kind, name, key):
    for f, d in docs:
        if f == fn and d["kind"] == kind and d["metadata"]["name"] == name:
            vals = secret_values(d) if kind == "Secret" else d.get("data", {})
            return key is None or key in vals
    return False


def pod_security(what, psc, csc, need_uid=True):
    def get(k):
        return csc.get(k, psc.get(k))

    if get("runAsNonRoot") is not True:
        bad(f"{what}: runAsNonRoot: true missing")
    if need_uid and not get("runAsUser"):
        bad(f"{what}: a numeric non-zero runAsUser is needed (runAsNonRoot cannot check a user name)")
    if csc.get("readOnlyRootFilesystem") is not True:
        bad(f"{what}: readOnlyRootFilesystem: true missing")
    if csc.get("allowPrivilegeEscalation") is not False:
        bad(f"{what}: allowPrivilegeEscalation: false missing")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        bad(f"{what}: capabilities.drop [ALL] missing")
    if (get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        bad(f"{what}: seccompProfile RuntimeDefault missing")


deps = by_kind.get("Deployment", [])
tg_deps = [
    d
    for d in deps
    if any(
        c["name"] == "taskgate"
        for c in d["spec"]["template"]["spec"].get("containers", [])
        + d["spec"]["template"]["spec"].get("initContainers", [])
    )
]
redis_url = None  # (URL, Secret name/key) when the manifests turn Redis on
if len(tg_deps) != 1:
    bad(f"expected one Deployment with a taskgate container, found {len(tg_deps)}")
else:
    dep = tg_deps[0]
    if file_of[id(dep)] != SIDECAR_FILE:
        bad(f"the taskgate Deployment should be in {SIDECAR_FILE}, not {file_of[id(dep)]}")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    pod_labels = pod.get("metadata", {}).get("labels", {})
    ctrs = spec.get("containers", []) + spec.get("initContainers", [])
    tg = [c for c in ctrs if c["name"] == "taskgate"]
    if len(tg) != 1:
        bad("no single container named taskgate")
    else:
        tg = tg[0]
        if tg in spec.get("initContainers", []) and tg.get("restartPolicy") != "Always":
            bad("taskgate in initContainers must be a native sidecar (restartPolicy: Always)")
        if len(spec.get("containers", [])) < 1 or all(c["name"] == "taskgate" for c in spec["containers"]):
            bad("the example app container is missing")
        env = {e["name"]: e.get("value") for e in tg.get("env", [])}
        if (
            any("valueFrom" in e and e["name"] == "TASKGATE_API_KEY" for e in tg.get("env", []))
            or "TASKGATE_API_KEY" in env
        ):
            bad("the key must come from a mounted Secret file (TASKGATE_API_KEY_FILE), not TASKGATE_API_KEY")
        eff = {**image_env, **{k: v for k, v in env.items() if v is not None}}
        admin = port_of(eff["TASKGATE_ADMIN_LISTEN"])
        public = port_of(eff["TASKGATE_LISTEN"])
        if not eff["TASKGATE_ADMIN_LISTEN"].startswith("0.0.0.0:"):
            bad("in a pod the admin listener must bind 0.0.0.0 (kubelet probes the pod IP)")
        ports = {p.get("name"): p["containerPort"] for p in tg.get("ports", [])}
        if admin not in ports.values() or public not in ports.values():
            bad(f"containerPorts {ports} do not list the listeners {public} and {admin}")

        def resolve(port):
            return ports.get(port, port) if isinstance(port, str) else port

        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            g = tg.get(probe, {}).get("httpGet")
            if not g or g.get("path") != path or resolve(g.get("port")) != admin:
                bad(f"{probe} must be httpGet {path} on the admin port {admin}")
        if "startupProbe" in tg:
            g = tg["startupProbe"].get("httpGet", {})
            if resolve(g.get("port")) != admin or g.get("path") not in ("/healthz", "/readyz"):
                bad("startupProbe must GET /healthz or /readyz on the admin port")
        ann = pod.get("metadata", {}).get("annotations", {})
        if (
            ann.get("prometheus.io/scrape") != "true"
            or str(ann.get("prometheus.io/port")) != str(admin)
            or ann.get("prometheus.io/path") != "/metrics"
        ):
            bad(f"prometheus.io annotations must scrape :{admin}/metrics")
        # security
        pod_security("taskgate", spec.get("securityContext", {}), tg.get("securityContext", {}), need_uid=False)
        res = tg.get("resources", {})
        if not {"cpu", "memory"} <= set(res.get("requests", {})) or "memory" not in res.get("limits", {}):
            bad("taskgate needs cpu+memory requests and a memory limit")
        stop_budget(eff, "Kubernetes", float(spec.get("terminationGracePeriodSeconds", 30)))
        # key file -> a Secret volume that exists in these manifests with that key
        mounts = {m["mountPath"].rstrip("/"): m for m in tg.get("volumeMounts", [])}
        vols = {v["name"]: v for v in spec.get("volumes", [])}

        def volume_file(path):
            d, f = os.path.split(path)
            m = mounts.get(d)
            return (vols.get(m["name"]), f) if m else (None, f)

        keyfile = env.get("TASKGATE_API_KEY_FILE")
        vol, f = volume_file(keyfile or "/nonexistent/x")
        if not keyfile or not vol or "secret" not in vol:
            bad("TASKGATE_API_KEY_FILE must point into a mounted Secret volume")
        else:
            items = {i["path"]: i["key"] for i in vol["secret"].get("items", [])} or None
            key = items.get(f) if items else f
            sec = secrets.get(vol["secret"]["secretName"])
            if not sec or key not in {**sec.get("data", {}), **sec.get("stringData", {})}:
                bad(f"Secret {vol['secret']['secretName']} with key {key} is not in the manifests")
            else:
                ok(f"key: {keyfile} <- Secret {sec['metadata']['name']}/{key}")
        # TASKGATE_REDIS_URL: optional, from a Secret, so the sidecar manifest works alone.
        renv = [e for e in tg.get("env", []) if e["name"] == "TASKGATE_REDIS_URL"]
        ref = renv[0].get("valueFrom", {}).get("secretKeyRef") if renv else None
        if not renv:
            bad("taskgate: no TASKGATE_REDIS_URL (expected from an optional Secret key)")
        elif "value" in renv[0] or not ref:
            bad("TASKGATE_REDIS_URL must come from a secretKeyRef (a URL may carry a password), not a value")
        elif ref.get("optional") is not True:
            bad("TASKGATE_REDIS_URL's secretKeyRef needs optional: true, or the pod cannot start without Redis")
        else:
            sec = secrets.get(ref["name"])
            val = secret_values(sec).get(ref["key"]) if sec else None
            where = f"Secret {ref['name']}/{ref['key']}"
            if sec is None or val is None:
                bad(f"TASKGATE_REDIS_URL: {where} is in no manifest (redis.yaml should define it)")
            elif file_of[id(sec)] == SIDECAR_FILE:
                bad(f"TASKGATE_REDIS_URL: {where} must not be in {SIDECAR_FILE} (Redis would always be on)")
            else:
                redis_url = (val, where, file_of[id(sec)])
                ok(f"TASKGATE_REDIS_URL <- {where} (optional: true; defined in {redis_url[2]} only)")
        # The sidecar manifest applied alone: every required reference resolves in it.
        optional = []
        for kind, name, key, opt, where in pod_refs(spec):
            if opt:
                optional.append(f"{kind} {name}/{key} ({where})")
            elif not resolves_in(SIDECAR_FILE, kind, name, key):
                bad(
                    f"{SIDECAR_FILE} alone: {where} needs {kind} {name}{'/' + key if key else ''}, "
                    "which only another file defines (make it optional or move it)"
                )
        ok(
            f"{SIDECAR_FILE} applies alone: every required Secret/ConfigMap is in it; optional: "
            + (", ".join(optional) or "none")
        )
        argv = list(tg.get("args", []))
        tmp_args = list(argv)
        conf = {}
        if "--config" in argv:
            cpath = argv[argv.index("--config") + 1]
            vol, f = volume_file(cpath)
            cm = cms.get(vol["configMap"]["name"]) if vol and "configMap" in vol else None
            if not cm or f not in cm.get("data", {}):
                bad(f"--config {cpath} is not a key of a mounted ConfigMap")
            else:
                try:
                    conf = tomllib.loads(cm["data"][f])
                except tomllib.TOMLDecodeError as e:
                    bad(f"ConfigMap {cm['metadata']['name']}/{f}: not TOML: {e}")
                    conf = {}
                for k in conf:
                    if k not in KEYS:
                        bad(f"ConfigMap {cm['metadata']['name']}/{f}: {k} is not a key of config/taskgate.toml")
                    if k in ("listen", "admin_listen"):
                        bad(f"ConfigMap sets {k}, which the image's TASKGATE_* env overrides")
                    if k == "redis_url":
                        bad("ConfigMap sets redis_url: keep it in the optional Secret (it may hold a password)")
                p = os.path.join(WORK, "k8s-taskgate.toml")
                with open(p, "w") as out:
                    out.write(cm["data"][f])
                tmp_args[argv.index("--config") + 1] = p
                ok(f"--config {cpath} <- ConfigMap {cm['metadata']['name']}/{f} ({len(conf)} keys, all known)")
        memory_budget("Kubernetes taskgate", eff, conf, res.get("limits", {}).get("memory"))
        scenarios.append((f"Kubernetes sidecar, {SIDECAR_FILE} alone (Redis off)", eff, tmp_args))
        if redis_url:
            scenarios.append(
                (
                    f"Kubernetes sidecar + {redis_url[2]} (TASKGATE_REDIS_URL from {redis_url[1]})",
                    {**eff, "TASKGATE_REDIS_URL": redis_url[0]},
                    tmp_args,
                )
            )
        # Services of the app's file: select the pod, never expose the admin port
        for svc in by_kind.get("Service", []):
            if file_of[id(svc)] != SIDECAR_FILE:
                if selects(svc["spec"].get("selector", {}), pod_labels):
                    bad(f"Service {svc['metadata']['name']} ({file_of[id(svc)]}) selects the app pods")
                continue
            sel = svc["spec"].get("selector", {})
            if not selects(sel, pod_labels):
                bad(f"Service {svc['metadata']['name']} does not select the pod")
            app_ports = {p.get("name"): p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
            for sp in svc["spec"]["ports"]:
                t = sp.get("targetPort", sp["port"])
                num = ports.get(t, app_ports.get(t, t)) if isinstance(t, str) else t
                if num == admin or t == "admin":
                    bad(f"Service {svc['metadata']['name']} exposes the admin port ({sp})")
            if not any(ports.get(sp.get("targetPort"), sp.get("targetPort")) == public for sp in svc["spec"]["ports"]):
                bad(f"Service {svc['metadata']['name']} does not expose taskgate's public port {public}")
        ok(
            f"Deployment: probes /healthz,/readyz on :{admin}, metrics annotations, Service exposes "
            f":{public} and not :{admin}, non-root/read-only/drop ALL/RuntimeDefault, resources"
        )

    # ---- Kubernetes: the optional Redis (redis.yaml) ----
    if redis_url:
        hp = url_parts(redis_url[0], f"{redis_url[1]}")
        svcs = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
        rsvc = svcs.get(hp[0]) if hp else None
        if hp and not rsvc:
            bad(f"{redis_url[1]}: host {hp[0]} is not a Service of the manifests")
        elif hp:
            sp = [p for p in rsvc["spec"]["ports"] if p["port"] == hp[1]]
            if file_of[id(rsvc)] != REDIS_FILE:
                bad(f"Service {hp[0]} should be in {REDIS_FILE}")
            if rsvc["spec"].get("type", "ClusterIP") != "ClusterIP":
                bad(f"Service {hp[0]}: Redis must stay in-cluster (type ClusterIP)")
            rdeps = [
                d
                for d in deps
                if selects(
                    rsvc["spec"].get("selector", {}), d["spec"]["template"].get("metadata", {}).get("labels", {})
                )
            ]
            if not sp:
                bad(f"Service {hp[0]} has no port {hp[1]} (from the URL)")
            elif len(rdeps) != 1 or rdeps[0] is dep:
                bad(f"Service {hp[0]} should select exactly the Redis Deployment, selects {len(rdeps)}")
            else:
                rdep = rdeps[0]
                rpod = rdep["spec"]["template"]
                rspec = rpod["spec"]
                rlabels = rpod.get("metadata", {}).get("labels", {})
                name = f"Deployment {rdep['metadata']['name']}"
                if file_of[id(rdep)] != REDIS_FILE:
                    bad(f"{name} should be in {REDIS_FILE}")
                if rdep["spec"].get("replicas", 1) != 1 or rdep["spec"].get("strategy", {}).get("type") != "Recreate":
                    bad(f"{name}: one replica with strategy Recreate (two Redis would split the pub/sub channel)")
                rc = rspec.get("containers", [])
                if len(rc) != 1:
                    bad(f"{name}: expected one container")
                else:
                    rc = rc[0]
                    pinned_redis_image(rc.get("image"), name)
                    mm = redis_flags(list(rc.get("command", [])) + list(rc.get("args", [])), name)
                    limit = rc.get("resources", {}).get("limits", {}).get("memory")
                    if not limit or not {"cpu", "memory"} <= set(rc.get("resources", {}).get("requests", {})):
                        bad(f"{name}: needs cpu+memory requests and a memory limit")
                    elif mm and not mm < size_bytes(limit):
                        bad(f"{name}: maxmemory {mm} B is not below the memory limit {limit}")
                    cports = {p.get("name"): p["containerPort"] for p in rc.get("ports", [])}
                    t = sp[0].get("targetPort", sp[0]["port"])
                    if cports.get(t, t) != 6379:
                        bad(f"Service {hp[0]} port {hp[1]} -> {t}, which is not the container's 6379")
                    for probe in ("livenessProbe", "readinessProbe"):
                        if probe not in rc:
                            bad(f"{name}: {probe} missing")
                    pod_security(name, rspec.get("securityContext", {}), rc.get("securityContext", {}))
                    rvols = {v["name"]: v for v in rspec.get("volumes", [])}
                    data = [m for m in rc.get("volumeMounts", []) if m["mountPath"].rstrip("/") == "/data"]
                    if not data or "emptyDir" not in rvols.get(data[0]["name"], {}):
                        bad(f"{name}: /data (the working directory) must be an emptyDir on a read-only root")
                    if selects(svcs.get("web-app", {}).get("spec", {}).get("selector", {}), rlabels) or any(
                        selects(s["spec"].get("selector", {}), rlabels)
                        for s in by_kind.get("Service", [])
                        if file_of[id(s)] == SIDECAR_FILE
                    ):
                        bad(f"{name}: the app's Service selects the Redis pod (labels {rlabels})")
                    # NetworkPolicy: only the app pods reach Redis
                    nps = [
                        n
                        for n in by_kind.get("NetworkPolicy", [])
                        if selects(n["spec"].get("podSelector", {}).get("matchLabels", {}), rlabels)
                    ]
                    good = [
                        n
                        for n in nps
                        if "Ingress" in n["spec"].get("policyTypes", ["Ingress"])
                        and n["spec"].get("ingress")
                        and all(
                            any(
                                selects(f.get("podSelector", {}).get("matchLabels", {}), pod_labels)
                                and set(f) == {"podSelector"}
                                for f in r.get("from", [])
                            )
                            for r in n["spec"]["ingress"]
                        )
                    ]
                    if not good:
                        bad(f"{name}: no NetworkPolicy restricting ingress to the app pods")
                    ok(
                        f"{REDIS_FILE}: {redis_url[0]} -> Service {hp[0]}:{hp[1]} (ClusterIP) -> "
                        f"{name} ({rc.get('image')}): persistence off, maxmemory {mm} B < limit {limit}, "
                        "allkeys-lru, 1 replica/Recreate, probes, non-root/read-only/emptyDir /data, "
                        f"NetworkPolicy {good[0]['metadata']['name'] if good else '?'} (app pods only)"
                    )

# ---- docker compose ------------------------------------------------------------------------
compose = yaml.safe_load(read("deploy/docker-compose.yml"))
services = compose.get("services", {})
replicas = {n: s for n, s in services.items() if (s.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"}


def compose_env(s):
    env = s.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def compose_ports(s):
    """-> [(host_ip, host_port, target)] of a service's published ports."""
    out = []
    for p in s.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", ""), str(p.get("published", "")), int(p["target"])))
        else:
            parts = str(p).split("/")[0].split(":")
            target = int(parts[-1])
            host_port = parts[-2] if len(parts) >= 2 else ""
            host_ip = ":".join(parts[:-2]) if len(parts) >= 3 else ""
            out.append((host_ip, host_port, target))
    return out


if len(replicas) < 2:
    bad(f"compose: expected at least two taskgate replicas (built from deploy/Dockerfile), found {sorted(replicas)}")
host_ports = {}
redis_urls = {}
for rname, svc in sorted(replicas.items()):
    what = f"compose {rname}"
    b = svc.get("build", {})
    ctx = os.path.normpath(os.path.join(ROOT, "deploy", b.get("context", ".")))
    if ctx != ROOT or b.get("dockerfile") != "deploy/Dockerfile":
        bad(f"{what}: build must be context .. (the repository root) + dockerfile deploy/Dockerfile, got {b}")
    env = compose_env(svc)
    eff = {**image_env, **env}
    admin = port_of(eff["TASKGATE_ADMIN_LISTEN"])
    public = port_of(eff["TASKGATE_LISTEN"])
    for host_ip, host_port, target in compose_ports(svc):
        if target == admin:
            bad(f"{what}: the admin port is published ({host_ip}:{host_port}:{target})")
        elif host_ip != "127.0.0.1":
            bad(f"{what}: port {target} is published on {host_ip or 'all interfaces'}, not 127.0.0.1")
        if target == public:
            host_ports.setdefault(host_port, []).append(rname)
    if not any(t == public for _, _, t in compose_ports(svc)):
        bad(f"{what}: the public port {public} is not published")
    names = [s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])]
    kf = env.get("TASKGATE_API_KEY_FILE", "")
    if "TASKGATE_API_KEY" in env or not any(kf == f"/run/secrets/{n}" for n in names):
        bad(f"{what}: the key must come from a compose secret via TASKGATE_API_KEY_FILE=/run/secrets/<name>")
    for n in names:
        if "file" not in compose.get("secrets", {}).get(n, {}):
            bad(f"{what}: secret {n} is not declared with a file")
    if (
        svc.get("read_only") is not True
        or "ALL" not in svc.get("cap_drop", [])
        or "no-new-privileges:true" not in svc.get("security_opt", [])
    ):
        bad(f"{what}: should be read_only with cap_drop [ALL] and no-new-privileges")
    if not svc.get("mem_limit"):
        bad(f"{what}: no mem_limit")
    memory_budget(what, eff, {}, svc.get("mem_limit"))
    if (svc.get("healthcheck") or {}).get("test") != ["CMD", "/taskgate", "--healthcheck"]:
        bad(f"{what}: healthcheck must be [CMD, /taskgate, --healthcheck] (no shell in the image)")
    stop_budget(eff, what, seconds(svc.get("stop_grace_period", "10s")))
    redis_urls[rname] = env.get("TASKGATE_REDIS_URL")
    scenarios.append((what, eff, []))
images = {s.get("image") for s in replicas.values()}
if len(images) != 1:
    bad(f"compose: the replicas must share one image tag, found {images}")
for hport, who in host_ports.items():
    if len(who) > 1:
        bad(f"compose: {', '.join(who)} publish the same host port {hport}")
ok(
    f"compose: {len(replicas)} replicas ({', '.join(sorted(replicas))}) built from the repository root "
    f"with deploy/Dockerfile as {images.pop() if len(images) == 1 else '?'}, public ports on 127.0.0.1:"
    f"{','.join(sorted(host_ports))}, key from a compose secret file, admin port not published"
)

# Redis: the same URL in every replica, naming a compose service that is a cache only
urls = set(redis_urls.values())
if len(urls) != 1 or None in urls:
    bad(
        f"compose: every replica needs the same TASKGATE_REDIS_URL (purges reach only replicas on the "
        f"same Redis), found {redis_urls}"
    )
else:
    url = urls.pop()
    hp = url_parts(url, "compose TASKGATE_REDIS_URL")
    rsvc = services.get(hp[0]) if hp else None
    if hp and not rsvc:
        bad(f"compose: TASKGATE_REDIS_URL host {hp[0]} is not a service of the file")
    elif hp:
        what = f"compose {hp[0]}"
        pinned_redis_image(rsvc.get("image"), what)
        cmd = rsvc.get("command", [])
        cmd = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
        mm = redis_flags(cmd, what)
        port = int(dict(itertools.pairwise(cmd)).get("--port", 6379))
        if port != hp[1]:
            bad(f"{what}: listens on {port}, the URL says {hp[1]}")
        if rsvc.get("ports"):
            bad(f"{what}: Redis must not be published on the host ({rsvc['ports']})")
        if not rsvc.get("mem_limit"):
            bad(f"{what}: no mem_limit")
        elif mm and not mm < size_bytes(rsvc["mem_limit"]):
            bad(f"{what}: maxmemory {mm} B is not below mem_limit {rsvc['mem_limit']}")
        if (
            rsvc.get("read_only") is not True
            or "ALL" not in rsvc.get("cap_drop", [])
            or "no-new-privileges:true" not in rsvc.get("security_opt", [])
        ):
            bad(f"{what}: should be read_only with cap_drop [ALL] and no-new-privileges")
        user = str(rsvc.get("user", "")).split(":")[0]
        if not user or user in ("0", "root"):
            bad(f'{what}: should run as a non-root user (user: "999:1000" in the official image)')
        if not any(str(t).split(":")[0] == "/data" for t in rsvc.get("tmpfs", [])):
            bad(f"{what}: /data (its working directory) should be a tmpfs on the read-only root")
        test = " ".join(str(t) for t in (rsvc.get("healthcheck", {}).get("test") or []))
        if "redis-cli" not in test or "ping" not in test:
            bad(f"{what}: the healthcheck must run redis-cli ping")
        for rname, svc in replicas.items():
            cond = (svc.get("depends_on") or {}).get(hp[0], {}) if isinstance(svc.get("depends_on"), dict) else {}
            if cond.get("condition") != "service_healthy":
                bad(f"compose {rname}: must depend_on {hp[0]} with condition service_healthy")
        ok(
            f"compose: replicas share {url}; {hp[0]} ({rsvc.get('image')}): persistence off, maxmemory "
            f"{mm} B < mem_limit {rsvc.get('mem_limit')}, allkeys-lru, not published, read-only, "
            f"user {rsvc.get('user')}, redis-cli ping healthcheck, replicas wait for it to be healthy"
        )

# The example app talks to one replica, by service name
app = services.get("app")
if not app:
    bad("compose: the example app service is missing")
else:
    base = compose_env(app).get("TASK_API_BASE_URL", "")
    u = urllib.parse.urlsplit(base)
    target = replicas.get(u.hostname or "")
    if not target or u.port != port_of({**image_env, **compose_env(target)}["TASKGATE_LISTEN"]):
        bad(f"compose app: TASK_API_BASE_URL {base!r} is not a replica's public port")
    elif u.hostname not in (app.get("depends_on") or {}):
        bad(f"compose app: does not depend_on {u.hostname}")
    else:
        ok(f"compose app: TASK_API_BASE_URL {base} (replica {u.hostname}, which it depends on)")

# ---- systemd -------------------------------------------------------------------------------
unit = read("deploy/systemd/taskgate.service")
kv = {}
for ln in unit.splitlines():
    if ln and not ln.startswith(("#", ";", "[")) and "=" in ln:
        k, v = ln.split("=", 1)
        kv.setdefault(k.strip(), []).append(v.strip())


def last(k):
    return kv.get(k, [None])[-1]


senv = dict(v.split("=", 1) for v in kv.get("Environment", []))
required = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6",
    "MemoryDenyWriteExecute": "yes",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
}
for k, v in required.items():
    if last(k) != v:
        bad(f"systemd: {k}={v} expected, found {last(k)!r}")
if "@system-service" not in kv.get("SystemCallFilter", []):
    bad("systemd: SystemCallFilter=@system-service missing")
if "64" not in " ".join(kv.get("RestartPreventExitStatus", [])).split():
    bad("systemd: RestartPreventExitStatus must include 64 (bad configuration)")
creds = [c.split(":", 1)[0] for c in kv.get("LoadCredential", [])]
if not any(senv.get("TASKGATE_API_KEY_FILE") == f"%d/{c}" for c in creds):
    bad("systemd: TASKGATE_API_KEY_FILE must be %d/<a LoadCredential= name>")
if "TASKGATE_API_KEY" in senv:
    bad("systemd: TASKGATE_API_KEY in Environment= would put the key in the unit")
stop_budget(senv, "systemd", seconds(last("TimeoutStopSec") or "90s"))
argv = (last("ExecStart") or "").split()[1:]
if "--config" in argv:
    # The unit's instructions install config/taskgate.toml as that file.
    argv[argv.index("--config") + 1] = os.path.join(ROOT, "config/taskgate.toml")
memory_budget("systemd", senv, tomllib.loads(config_text), last("MemoryMax"))
scenarios.append(("systemd unit", senv, argv))
ok("systemd: DynamicUser, LoadCredential -> TASKGATE_API_KEY_FILE=%d/..., sandboxing, RestartPreventExitStatus=64")
scenarios.insert(0, ("image defaults (docker run)", dict(image_env), []))

# ---- the binary ------------------------------------------------------------------------------
binary = os.environ.get("DEPLOY_CHECK_BIN")
print()
if not binary:
    print(
        "  SKIPPED: taskgate --check-config per deployment (no taskgate binary newer than the "
        "sources; build one, or run with --build)"
    )
else:
    print(f"  taskgate --check-config with each deployment's env/args ({binary}):")
    keyfile = os.path.join(WORK, "livepeer-api-key")
    with open(keyfile, "w") as f:
        f.write("00000000-0000-0000-0000-000000000000\n")
    run_dir = os.path.join(WORK, "cwd")  # no config/taskgate.toml here
    os.makedirs(run_dir, exist_ok=True)

    # Every other secret file a deployment names, as a scratch file of the right shape (the
    # paths of mounted Secrets do not exist here): one line, or a PEM public key.
    pem = (
        "-----BEGIN PUBLIC KEY-----\n"
        "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
        "-----END PUBLIC KEY-----\n"
    )
    secret_files = {}
    for var, text in (
        ("TASKGATE_WEBHOOK_SECRET_FILE", "whsec_deploy_check\n"),
        ("TASKGATE_ACCESS_SECRET_FILE", "access-deploy-check\n"),
        ("TASKGATE_ACCESS_PUBLIC_KEY_FILE", pem),
        ("TASKGATE_ADMIN_TOKEN_FILE", "admin-deploy-check\n"),
    ):
        p = os.path.join(WORK, var.lower())
        with open(p, "w") as f:
            f.write(text)
        secret_files[var] = p

    def check(name, env, argv, want):
        # The deployment's key file (or, for the bare image, the one a user would add).
        e = {**env, "TASKGATE_API_KEY_FILE": keyfile}
        e.update({k: v for k, v in secret_files.items() if k in env})
        full = {"PATH": "/usr/bin:/bin", "HOME": run_dir, **e}
        r = subprocess.run(
            [binary, "--check-config", *argv],
            env=full,
            cwd=run_dir,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        line = (r.stdout + r.stderr).strip().splitlines()
        line = line[-1] if line else ""
        if r.returncode != want:
            bad(f"{name}: taskgate --check-config exited {r.returncode} (want {want}): {line}")
        else:
            ok(f"{name}: exit {r.returncode}: {line}")

    for name, env, argv in scenarios:
        check(name, env, argv, 0)
    # The check above would notice a drifted variable: prove it with one.
    check("a misspelt variable (negative control)", {"TASKGATE_DRAIN_TIMOUT": "10s"}, [], 64)
    # ... and that TASKGATE_REDIS_URL is parsed, not just passed through.
    check("a Redis URL that is not redis:// (negative control)", {"TASKGATE_REDIS_URL": "http://redis:6379/0"}, [], 64)

if problems:
    print(f"\n{len(problems)} problem(s)")
    sys.exit(1)
