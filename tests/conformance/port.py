#!/usr/bin/env python3
"""Ports the kubernetes-sigs/network-policy-api conformance suite (ClusterNetworkPolicy
v1alpha2) to `enforcer lab run` scenarios: one file per upstream test, written next to this
script. README.md (same folder) says what is translated and how; this script is that
translation, so that a newer upstream can be ported again and the result diffed.

    python3 tests/conformance/port.py GIT_DIR [COMMIT]

GIT_DIR is a clone (bare or not) of kubernetes-sigs/network-policy-api; COMMIT defaults to
its HEAD. The script reads conformance/tests/*.go, conformance/base/**.yaml from that commit,
and nothing else. It stops with an error on any upstream construct it does not recognise
(a new helper, a new kind of mutation), instead of guessing.
"""

import copy
import json
import os
import re
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))

# ------------------------------------------------------------------------------------------
# The cluster of conformance/base/manifests.yaml, as lab pods.

# suite.go: HostNetworkPortRangeStart defaults to 34345, 8 ports; manifests.yaml and the
# experimental policies are Go templates over them.
HOST_NETWORK_PORTS = [34345 + i for i in range(8)]

NODES = ["node-1", "node-2"]
# Replica -0 on node-1, -1 on node-2. The host-networked centaur StatefulSet's two replicas
# cannot share a node (the same host ports); centaur-1 (the node-peer tests' server) is put on
# node-1 so that the Admin node-peer test (client harry-potter-1, on node-2) crosses nodes and
# the Baseline one probes from both nodes.
NODE_OF = {"0": "node-1", "1": "node-2"}
CENTAUR_NODE = {"centaur-0": "node-2", "centaur-1": "node-1"}

# Fixed addresses, only for the pods whose address an inline CIDR test writes into a policy
# (upstream reads them from the pod status at run time).
FIXED_IPS = {
    "network-policy-conformance-ravenclaw/luna-lovegood-0": "10.42.1.100",
    "network-policy-conformance-hufflepuff/cedric-diggory-0": "10.42.1.101",
}


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


class Upstream:
    def __init__(self, git_dir, commit):
        self.git_dir = git_dir
        self.commit = sh("git", "-C", git_dir, "rev-parse", commit or "HEAD").strip()

    def read(self, path):
        return sh("git", "-C", self.git_dir, "show", f"{self.commit}:{path}")

    def ls(self, path):
        out = sh("git", "-C", self.git_dir, "ls-tree", "-r", "--name-only", self.commit, path)
        return sorted(out.split())


def template(text):
    """What the upstream Applier does before applying: the Go template over the host ports."""

    def sub(m):
        return str(HOST_NETWORK_PORTS[int(m.group(1))])

    out = re.sub(r"\{\{\s*index \.HostNetworkPorts (\d+)\s*\}\}", sub, text)
    if "{{" in out:
        sys.exit(f"unknown template construct in: {out[out.index('{{'):][:80]}")
    return out


def documents(text):
    """The YAML documents of a file, each as (its text, its value), empty ones dropped."""
    docs = []
    for part in re.split(r"^---[ \t]*$", text, flags=re.M):
        value = yaml.safe_load(part)
        if value:
            docs.append((part.strip("\n"), value))
    return docs


def port_of(container):
    """The servers a container of manifests.yaml runs: [(port, protocol, name or None)]."""
    cmd = " ".join(container.get("command", []))
    declared = {
        (p["containerPort"], p.get("protocol", "TCP")): p.get("name")
        for p in container.get("ports", [])
    }
    served = []
    m = re.search(r"serve-hostname --(tcp|udp) --http=false --port (\d+)", cmd)
    if m:
        served.append((int(m.group(2)), m.group(1).upper()))
    m = re.search(r"netexec --http-port (\d+) --udp-port (\d+)", cmd)
    if m:
        served.append((int(m.group(2)), "UDP"))
        served.append((int(m.group(1)), "TCP"))  # netexec's HTTP server, on the host too
    if "porter" in cmd:
        for e in container.get("env", []):
            m = re.fullmatch(r"SERVE_SCTP_PORT_(\d+)", e["name"])
            if m:
                served.append((int(m.group(1)), "SCTP"))
    if not cmd:
        return []  # the client container: agnhost's default, no server
    if not served:
        sys.exit(f"container {container['name']}: cannot tell what it serves: {cmd}")
    for key in declared:
        if key not in served:
            sys.exit(f"container {container['name']}: declares {key} but does not serve it")
    return [(port, proto, declared.get((port, proto))) for port, proto in served]


def cluster(up):
    namespaces, pods = [], []
    for _, obj in documents(template(up.read("conformance/base/manifests.yaml"))):
        kind = obj["kind"]
        if kind == "Namespace":
            namespaces.append(
                {"name": obj["metadata"]["name"], "labels": obj["metadata"].get("labels", {})}
            )
        elif kind == "StatefulSet":
            spec = obj["spec"]
            tmpl = spec["template"]
            host_network = tmpl["spec"].get("hostNetwork", False)
            ports = [p for c in tmpl["spec"]["containers"] for p in port_of(c)]
            for i in range(spec["replicas"]):
                name = f"{obj['metadata']['name']}-{i}"
                ns = obj["metadata"]["namespace"]
                pod = {
                    "namespace": ns,
                    "name": name,
                    "node": CENTAUR_NODE[name] if host_network else NODE_OF[str(i)],
                    "hostNetwork": host_network,
                    "labels": tmpl["metadata"]["labels"],
                    "ports": ports,
                }
                if f"{ns}/{name}" in FIXED_IPS:
                    pod["ips"] = [FIXED_IPS[f"{ns}/{name}"]]
                pods.append(pod)
        else:
            sys.exit(f"manifests.yaml: unknown kind {kind}")
    return namespaces, pods


# ------------------------------------------------------------------------------------------
# The Go tests, read as a sequence of events.

TOKEN = re.compile(
    r'(?P<short>ShortName:\s*"(?P<sn>[^"]+)")'
    r'|(?P<desc>Description:\s*"(?P<ds>[^"]+)")'
    r'|(?P<feat>Features:\s*\[\]suite\.SupportedFeature\{(?P<fs>[^}]*)\})'
    r'|(?P<man>Manifests:\s*\[\]string\{(?P<mf>[^}]*)\})'
    r'|(?P<run>t\.Run\("(?P<title>[^"]+)")'
    r'|(?P<get>(?P<var>\w+)\s*:?=\s*kubernetes\.GetPod\(t, s\.Client, "(?P<gns>[^"]+)", "(?P<gpod>[^"]+)")'
    r'|(?P<poke>kubernetes\.PokeServer\(t, s\.ClientSet, &s\.KubeConfig, "(?P<cns>[^"]+)", '
    r'"(?P<cpod>[^"]+)", "(?P<proto>\w+)",\s*(?P<sexpr>\w+)\.Status\.PodIP, '
    r"int32\((?P<port>[^)]+)\), s\.TimeoutConfig, (?P<exp>true|false)\))"
    r"|(?P<mut>kubernetes\.Patch\w+\([^\n]*|s\.Client\.Delete\([^\n]*)"
)


def go_code(chunk):
    """The chunk without its comment lines."""
    return "\n".join(l for l in chunk.splitlines() if not l.strip().startswith("//"))


def mutation(chunk, mut_line):
    """What the code before a Patch/Delete call does, as a mutation description."""
    code = go_code(chunk)
    if mut_line.startswith("kubernetes.PatchNamespace"):
        ns = re.findall(r'GetNamespace\(t, s\.Client, "([^"]+)"', code)
        labels = re.findall(r"SetLabels\(map\[string\]string\{([^}]*)\}\)", code)
        if len(ns) != 1 or len(labels) != 1:
            sys.exit(f"unrecognised namespace patch:\n{code}")
        pairs = dict(re.findall(r'"([^"]+)":\s*"([^"]*)"', labels[0]))
        return {"op": "relabel-namespace", "namespace": ns[0], "labels": pairs}
    if mut_line.startswith("s.Client.Delete"):
        m = re.search(
            r"networkingv1\.NetworkPolicy\{\}.*?Namespace:\s*\"([^\"]+)\",\s*Name:\s*\"([^\"]+)\"",
            code,
            re.S,
        )
        if not m:
            sys.exit(f"unrecognised delete:\n{code}")
        return {"op": "delete-networkpolicy", "namespace": m.group(1), "name": m.group(2)}
    if not mut_line.startswith("kubernetes.PatchClusterNetworkPolicy"):
        sys.exit(f"unknown mutation: {mut_line}")
    names = re.findall(r'GetClusterNetworkPolicy\(t, s\.Client, "([^"]+)"', code)
    if len(names) != 1:
        sys.exit(f"patch of which policy?\n{code}")
    out = {"op": "patch-cnp", "name": names[0], "changes": []}
    body = code[code.index("mutate := cnp.DeepCopy()") :]
    if ".Protocols = " in body:
        # A rule's protocols replaced by one destinationNamedPort (the named-port tests).
        m = re.search(
            r"(\w+) := mutate(?:\.DeepCopy\(\))?\.Spec\.(Ingress|Egress)\[(\d+)\]", body
        )
        var, gress, idx = m.group(1), m.group(2), int(m.group(3))
        pm = re.search(var + r"\.Protocols = \[\]api\.ClusterNetworkPolicyProtocol\{\s*\{\s*"
                       r"DestinationNamedPort: (\w+),\s*\},\s*\}", body)
        port_var = pm.group(1)
        port_name = re.search(port_var + r' := "([^"]+)"', body).group(1)
        if not re.search(rf"mutate\.Spec\.{gress}\[{idx}\] = {var}\b", body):
            sys.exit(f"named-port rule not written back:\n{body}")
        out["changes"].append(("named-port", gress.lower(), idx, port_name))
    elif "append(newRule, mutate.Spec.Egress...)" in body:
        # The inline CIDR tests: a rule allowing two pods' addresses, inserted first.
        rule = re.search(r'Name:\s*"([^"]+)",\s*Action:\s*"(\w+)"', body)
        pods = re.findall(r"api\.CIDR\((\w+)\.Status\.PodIP \+ mask\)", body)
        vars_ = dict(
            (v, f"{ns}/{p}")
            for v, ns, p in re.findall(
                r'(\w+) := kubernetes\.GetPod\(t, s\.Client, "([^"]+)", "([^"]+)"', code
            )
        )
        out["changes"].append(
            ("prepend-egress-networks", rule.group(1), rule.group(2), [vars_[v] for v in pods])
        )
    else:
        for m in re.finditer(
            r"mutate\.Spec\.(Ingress|Egress)\[(\d+)\] = mutate\.Spec\.(Ingress|Egress)\[(\d+)\]",
            body,
        ):
            if m.group(1) != m.group(3):
                sys.exit(f"rule moved across directions:\n{body}")
            out["changes"].append(("swap", m.group(1).lower(), int(m.group(2)), int(m.group(4))))
        for m in re.finditer(
            r"mutate\.Spec\.(Ingress|Egress)\[(\d+)\]\.Action = api\.ClusterNetworkPolicyRuleAction(\w+)",
            body,
        ):
            out["changes"].append(("action", m.group(1).lower(), int(m.group(2)), m.group(3)))
        for m in re.finditer(r"mutate\.Spec\.Priority = (\d+)", body):
            out["changes"].append(("priority", int(m.group(1))))
        # Every statement on `mutate` must be one of the above.
        stmts = [l.strip() for l in body.splitlines() if "mutate" in l]
        known = re.compile(
            r"mutate := cnp\.DeepCopy\(\)"
            r"|\w+ := mutate\.Spec\.(Ingress|Egress)\[\d+\]"
            r"|mutate\.Spec\.(Ingress|Egress)\[\d+\] = (mutate\.Spec\.(Ingress|Egress)\[\d+\]|\w+Rule)"
            r"|mutate\.Spec\.(Ingress|Egress)\[\d+\]\.Action = api\.\w+"
            r"|mutate\.Spec\.Priority = \d+"
            r"|kubernetes\.PatchClusterNetworkPolicy\(t, s\.Client, cnp, mutate, s\.TimeoutConfig\.GetTimeout\)"
        )
        for s in stmts:
            if not known.fullmatch(s):
                sys.exit(f"unrecognised statement: {s}")
    if not out["changes"]:
        sys.exit(f"patch without a recognised change:\n{body}")
    return out


def tests(up):
    found = []
    for path in up.ls("conformance/tests"):
        if not path.endswith(".go") or path.endswith("main.go"):
            continue
        src = up.read(path)
        pods = {}
        cur = None
        last = 0
        for m in TOKEN.finditer(src):
            # The code since the last subtest, probe or change (GetPod calls included).
            chunk = src[last : m.start()]
            if not m.group("get"):
                last = m.end()
            if m.group("short"):
                cur = {"short": m.group("sn"), "file": path, "events": []}
                found.append(cur)
            elif m.group("desc"):
                cur["description"] = m.group("ds")
            elif m.group("feat"):
                cur["features"] = re.findall(r"suite\.Support(\w+)", m.group("fs"))
            elif m.group("man"):
                cur["manifests"] = re.findall(r'"([^"]+)"', m.group("mf"))
            elif m.group("run"):
                cur["events"].append({"ev": "run", "title": m.group("title")})
            elif m.group("get"):
                pods[m.group("var")] = f"{m.group('gns')}/{m.group('gpod')}"
            elif m.group("poke"):
                port = m.group("port")
                hp = re.fullmatch(r"s\.HostNetworkPorts\[(\d+)\]", port)
                cur["events"].append(
                    {
                        "ev": "poke",
                        "from": f"{m.group('cns')}/{m.group('cpod')}",
                        "to": pods[m.group("sexpr")],
                        "port": HOST_NETWORK_PORTS[int(hp.group(1))] if hp else int(port),
                        "protocol": m.group("proto").upper(),
                        "expect": "allow" if m.group("exp") == "true" else "deny",
                    }
                )
            elif m.group("mut"):
                cur["events"].append({"ev": "mut", **mutation(chunk, m.group("mut"))})
        n = src.count("PokeServer(")
        got = sum(1 for t in found if t["file"] == path for e in t["events"] if e["ev"] == "poke")
        if n != got:
            sys.exit(f"{path}: {n} PokeServer calls, {got} read")
    return found


# ------------------------------------------------------------------------------------------
# Applying the mutations to the objects, as the API server would have them.


def rule_list(spec, gress):
    return spec[gress]


def apply_change(obj, change, ips):
    spec = obj["spec"]
    kind = change[0]
    if kind == "swap":
        _, gress, i, j = change
        rules = rule_list(spec, gress)
        rules[i], rules[j] = rules[j], rules[i]
        return f"spec.{gress}[{i}] and [{j}] swapped"
    if kind == "action":
        _, gress, i, action = change
        rule_list(spec, gress)[i]["action"] = action
        return f"spec.{gress}[{i}].action set to {action}"
    if kind == "priority":
        old = spec["priority"]
        spec["priority"] = change[1]
        return f"spec.priority {old} -> {change[1]}"
    if kind == "named-port":
        _, gress, i, name = change
        rule_list(spec, gress)[i]["protocols"] = [{"destinationNamedPort": name}]
        return (
            f"spec.{gress}[{i}].protocols replaced by [{{destinationNamedPort: {name}}}]"
        )
    if kind == "prepend-egress-networks":
        _, name, action, pods = change
        cidrs = [f"{ips[p]}/32" for p in pods]
        spec["egress"].insert(0, {"name": name, "action": action, "to": [{"networks": cidrs}]})
        return (
            f"rule {name} ({action} to networks {', '.join(cidrs)}: the addresses of "
            f"{' and '.join(pods)}) inserted at spec.egress[0]"
        )
    raise AssertionError(change)


# ------------------------------------------------------------------------------------------
# Writing a scenario.


def kebab(name):
    """CNPAdminTierEgressInlineCIDRPeers -> cnp-admin-tier-egress-inline-cidr-peers."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1-\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", name).lower()


def flow(d):
    """A mapping in YAML flow style, on one line."""
    return yaml.safe_dump(d, default_flow_style=True, sort_keys=False, width=1000).strip()


def block(value, indent):
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, width=100)
    return "".join(" " * indent + l + "\n" for l in text.splitlines())


def list_item(text, indent):
    """A verbatim YAML document as an item of a list at `indent`; its comments kept."""
    lines = text.splitlines()
    head = []
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        if lines[0].strip():
            head.append(" " * (indent + 2) + lines[0].strip())
        lines.pop(0)
    out = head + [" " * indent + "- " + lines[0]]
    out += [(" " * (indent + 2) + l) if l.strip() else "" for l in lines[1:]]
    return "\n".join(out) + "\n"


def target(pod_key, pods):
    pod = pods[pod_key]
    if pod["hostNetwork"]:
        return f"node:{pod['node']}"
    return pod_key


def probe_lines(probes, pods, indent):
    out, said = [], None
    for e in probes:
        out.append(probe_line(e, pods, indent, said != e["to"]))
        said = e["to"]
    return "".join(out)


def probe_line(e, pods, indent, say_host=True):
    p = {
        "from": e["from"],
        "to": target(e["to"], pods),
        "port": e["port"],
        "protocol": e["protocol"],
        "expect": e["expect"],
    }
    text = " " * indent + "- " + flow(p) + "\n"
    if pods[e["to"]]["hostNetwork"] and say_host:
        text = " " * indent + f"# {e['to']} (host-networked on {pods[e['to']]['node']})\n" + text
    return text


def write(up, t, namespaces, pods_list):
    # Fixed addresses only where this test writes them into a policy.
    needed = {
        pod
        for e in t["events"]
        if e["ev"] == "mut" and e["op"] == "patch-cnp"
        for c in e["changes"]
        if c[0] == "prepend-egress-networks"
        for pod in c[3]
    }
    pods_list = [
        {k: v for k, v in p.items() if k != "ips" or f"{p['namespace']}/{p['name']}" in needed}
        for p in pods_list
    ]
    for pod in needed:
        if pod not in FIXED_IPS:
            sys.exit(f"{t['short']}: {pod}'s address goes into a policy; give it one in FIXED_IPS")
    pods = {f"{p['namespace']}/{p['name']}": p for p in pods_list}
    ips = {k: p["ips"][0] for k, p in pods.items() if "ips" in p}
    # The objects the test starts from, as upstream applies them.
    base = []
    for m in t["manifests"]:
        for text, obj in documents(template(up.read("conformance/" + m))):
            base.append((m, text, obj))
    state = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for _, _, o in base}
    state = copy.deepcopy(state)

    # Steps: the first t.Run's probes are the initial probes unless it begins with a change;
    # every later t.Run is a step; a change after probes within one t.Run starts a new step.
    def new_step(run, continued=False):
        title = run + (" (continued)" if continued else "")
        return {"run": run, "title": title, "notes": [], "apply": [], "delete": [],
                "relabel": [], "probes": []}

    steps = []
    initial = None
    cur = None
    for e in t["events"]:
        if e["ev"] == "run":
            cur = new_step(e["title"])
            if initial is None:
                initial = cur
            else:
                steps.append(cur)
        elif e["ev"] == "mut":
            if cur is initial or cur["probes"]:
                cur = new_step(cur["run"], continued=bool(cur["probes"]))
                steps.append(cur)
            if e["op"] == "patch-cnp":
                key = ("ClusterNetworkPolicy", None, e["name"])
                obj = state[key]
                for c in e["changes"]:
                    cur["notes"].append(f"ClusterNetworkPolicy {e['name']}: " + apply_change(obj, c, ips))
                # The whole object as it now is (a later change in the same step replaces it).
                cur["apply"] = [a for a in cur["apply"] if a["metadata"]["name"] != e["name"]]
                cur["apply"].append(copy.deepcopy(obj))
            elif e["op"] == "relabel-namespace":
                cur["notes"].append(
                    f"namespace {e['namespace']} labels set to {flow(e['labels'])} "
                    "(the API server keeps kubernetes.io/metadata.name)"
                )
                cur["relabel"].append({"namespace": e["namespace"], "labels": e["labels"]})
            elif e["op"] == "delete-networkpolicy":
                key = ("NetworkPolicy", e["namespace"], e["name"])
                if key not in state:
                    sys.exit(f"{t['short']}: deletes {key}, which it never created")
                del state[key]
                cur["notes"].append(f"NetworkPolicy {e['namespace']}/{e['name']} deleted")
                cur["delete"].append(
                    {"kind": "NetworkPolicy", "namespace": e["namespace"], "name": e["name"]}
                )
        elif e["ev"] == "poke":
            cur["probes"].append(e)

    out = []
    w = out.append
    w(f"# Upstream ShortName: {t['short']}\n")
    w(f"# Source: kubernetes-sigs/network-policy-api {t['file']} at {up.commit}\n")
    w(f"# Description: {t['description']}\n")
    w(f"# Features: {', '.join(t['features'])}\n")
    w(f"# Policies: {', '.join('conformance/' + m for m in t['manifests'])}\n")
    w("# Cluster: conformance/base/manifests.yaml (each StatefulSet's two replicas as pods).\n")
    w("# Ported by tests/conformance/port.py; README.md there says what is translated and how.\n")
    w("# Upstream's t.Run subtests are the initial probes and the steps, in order; changes are\n")
    w("# cumulative, as upstream's are.\n")
    w(f"nodes: [{', '.join(NODES)}]\n")
    w("namespaces:\n")
    for ns in namespaces:
        w(f"  - {flow(ns)}\n")
    w("pods:\n")
    for p in pods_list:
        w(f"  - namespace: {p['namespace']}\n")
        w(f"    name: {p['name']}\n")
        w(f"    node: {p['node']}\n")
        if p["hostNetwork"]:
            w("    hostNetwork: true\n")
        w(f"    labels: {flow(p['labels'])}\n")
        if "ips" in p:
            w(f"    ips: [{', '.join(p['ips'])}]   # fixed: written into a policy's networks below\n")
        w("    ports:\n")
        for port, proto, name in p["ports"]:
            d = ({"name": name} if name else {}) | {"port": port, "protocol": proto}
            w(f"      - {flow(d)}\n")
    w("policies:\n")
    for m, text, _ in base:
        w(f"  # {'conformance/' + m}\n")
        w(list_item(text, 2))
    if initial["probes"]:
        w("probes:\n")
        w(f'  # t.Run "{initial["title"]}"\n')
        w(probe_lines(initial["probes"], pods, 2))
    else:
        w("probes: []   # none: the first t.Run starts with a change (the first step)\n")
    if steps:
        w("steps:\n")
    for st in steps:
        w(f'  # t.Run "{st["title"]}"\n')
        for n in st["notes"]:
            w(f"  # upstream: {n}\n")
        first = True

        def key(k):
            nonlocal first
            s = ("  - " if first else "    ") + k
            first = False
            return s

        if st["apply"]:
            w(key("apply:\n"))
            for obj in st["apply"]:
                text = block(obj, 0)
                w(list_item(text, 6))
        if st["delete"]:
            w(key("delete:\n"))
            for d in st["delete"]:
                w(f"      - {flow(d)}\n")
        if st["relabel"]:
            w(key("relabel:\n"))
            for r in st["relabel"]:
                w(f"      - {flow(r)}\n")
        w(key("probes:\n"))
        w(probe_lines(st["probes"], pods, 6))
    return "".join(out)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    up = Upstream(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    namespaces, pods = cluster(up)
    found = tests(up)
    written = []
    for t in found:
        name = kebab(t["short"]) + ".yaml"
        text = write(up, t, namespaces, pods)
        with open(os.path.join(HERE, name), "w") as f:
            f.write(text)
        written.append((t["short"], name, t["file"]))
    for short, name, src in sorted(written, key=lambda x: x[1]):
        print(f"{short}\t{name}\t{src}")
    print(f"{len(written)} scenarios from {up.commit}", file=sys.stderr)


if __name__ == "__main__":
    main()
