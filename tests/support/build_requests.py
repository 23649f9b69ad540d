"""Requests whose programs prove, when run, who they run as, that their other files are there
and which dependency versions loaded: one per runtime and kind of dependencies (none, from the
registry, locked with a lock made by the real tool)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.support.locks import go_sum, npm_lock, pip_lock

PY_MAIN = """\
import json
import os
from importlib.metadata import version

from steps.plan import plan

print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "plan": plan(),
                  "loaded": LOADED, "files": sorted(os.listdir("."))}))
"""
PY_FILES = {"steps/__init__.py": "", "steps/plan.py": "def plan():\n    return ['cordon']\n"}
NODE_ESM = """\
import { readdirSync } from "node:fs";
import { plan } from "./steps/plan.js";

console.log(JSON.stringify({ uid: process.getuid(), gid: process.getgid(), plan: plan(),
  loaded: LOADED, files: readdirSync(".").sort() }));
"""
NODE_CJS = """\
const { readdirSync } = require("node:fs");
const { plan } = require("./steps/plan.js");

console.log(JSON.stringify({ uid: process.getuid(), gid: process.getgid(), plan: plan(),
  loaded: LOADED, files: readdirSync(".").sort() }));
"""
NODE_PLAN_ESM = 'export function plan() {\n  return ["cordon"];\n}\n'
NODE_PLAN_CJS = 'module.exports = { plan: () => ["cordon"] };\n'
GO_MAIN = """\
package main

import (
\t"encoding/json"
\t"fmt"
\t"os"

\t"remediation/steps"
IMPORTS)

func main() {
\tout, _ := json.Marshal(map[string]any{"uid": os.Getuid(), "gid": os.Getgid(),
\t\t"plan": steps.Plan(), "loaded": map[string]string{LOADED}})
\tfmt.Println(string(out))
}
"""
GO_FILES = {
    "steps/plan.go": 'package steps\n\nfunc Plan() []string { return []string{"cordon"} }\n'
}
UUID = ("github.com/google/uuid", "v1.6.0")


def python_request(kind: str, tmp: Path) -> dict[str, Any]:
    loaded = {"none": "{}", "registry": '{"tenacity": version("tenacity")}'}.get(
        kind, '{"python-dateutil": version("python-dateutil"), "six": version("six")}'
    )
    request: dict[str, Any] = {
        "lambdaFunction": f"py-{kind}",
        "runtime": "python",
        "sourceCode": PY_MAIN.replace("LOADED", loaded),
        "files": PY_FILES,
    }
    if kind == "registry":
        request["dependencies"] = ["tenacity>=9,<10"]
    elif kind != "none":
        request["dependencies"] = ["python-dateutil>=2.9"]
        request["lockFile"] = pip_lock("python-dateutil==2.9.0.post0", tmp / "pip")
    return request


def nodejs_request(kind: str, tmp: Path) -> dict[str, Any]:
    request: dict[str, Any] = {"lambdaFunction": f"js-{kind}", "runtime": "nodejs"}
    if kind == "none":  # ES modules
        request |= {"runtimeVersion": "24", "sourceCode": NODE_ESM.replace("LOADED", "{}")}
        request["files"] = {"steps/plan.js": NODE_PLAN_ESM}
        return request
    package = "ms" if kind == "registry" else "debug"
    loaded = f'{{ {package}: require("{package}/package.json").version }}'
    request |= {"sourceCode": NODE_CJS.replace("LOADED", loaded)}
    request["files"] = {"steps/plan.js": NODE_PLAN_CJS}
    request["runtimeVersion"] = "22" if kind == "registry" else "24"
    request["dependencies"] = {package: "^2.1.3" if package == "ms" else "^4.3.0"}
    if kind == "locked":
        request["lockFile"] = json.dumps(npm_lock(request["dependencies"], tmp / "npm"))
    return request


def go_request(kind: str, tmp: Path) -> dict[str, Any]:
    imports, loaded = "", ""
    request: dict[str, Any] = {"lambdaFunction": f"go-{kind}", "runtime": "go", "files": GO_FILES}
    if kind != "none":
        imports = f'\n\t"{UUID[0]}"\n'
        loaded = '"uuid": uuid.NewSHA1(uuid.NameSpaceDNS, []byte("example.com")).String()'
        request["dependencies"] = ["@".join(UUID)]
    if kind == "locked":
        request["lockFile"] = go_sum(*UUID, tmp / "go")
    request["sourceCode"] = GO_MAIN.replace("IMPORTS", imports).replace("LOADED", loaded)
    return request


REQUESTS = {"python": python_request, "nodejs": nodejs_request, "go": go_request}
LOADED: dict[tuple[str, str], dict[str, str | re.Pattern[str]]] = {
    ("python", "registry"): {"tenacity": re.compile(r"9\.")},
    ("python", "locked"): {"python-dateutil": "2.9.0.post0", "six": re.compile(r"1\.")},
    ("nodejs", "registry"): {"ms": re.compile(r"2\.1\.")},
    ("nodejs", "locked"): {"debug": re.compile(r"4\.")},
    ("go", "registry"): {"uuid": "cfbff0d1-9375-5685-968c-48ce8b15ae17"},
    ("go", "locked"): {"uuid": "cfbff0d1-9375-5685-968c-48ce8b15ae17"},
}
USERS = {"python": (10001, 0), "nodejs": (10001, 0), "go": (65532, 65532)}
