"""Real image builds with buildah (what Shipwright's buildah strategy and OpenShift builds run),
on the stand-in base images of ``scripts/base-images``, in a storage of the test run's own.

buildah runs as root with chroot isolation (no daemon, no user namespaces) on the overlay
storage driver where the kernel allows it, else vfs (slower: every layer a full copy); a RUN
step shares the host's network, so the intercepting proxy on loopback is reachable from it. Every build is reproducible (``--timestamp 0``): the same context gives the
same image ID."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from function.runtimes import RUNTIMES
from function.runtimes.go import RUNTIME_IMAGE
from function.settings import Settings
from tests.support.processes import built_bin_dir

MIRROR = "localhost/mirror/"
"""BUILD_CONTEXT_REGISTRY_MIRROR for the builds: buildah finds `localhost/…` names in its own
storage, and `--pull=never` makes sure nothing is fetched."""
BUILD_TIMEOUT = 900


def base_images_layout() -> Path:
    """The OCI layout of stand-in base images (BASE_IMAGES_DIR, else made or found by
    scripts/base-images)."""
    return built_bin_dir("BASE_IMAGES_DIR", "base-images")


def mirror_names(roles: Sequence[str]) -> dict[str, str]:
    """The name the rendered Dockerfiles give each stand-in, from the function's own image
    settings behind the mirror: role `python-3.13` is `localhost/mirror/python:3.13-slim-bookworm`."""
    settings = Settings(registry_mirror=MIRROR)
    names = {}
    for role in roles:
        if role == "go-runtime":
            names[role] = settings.image(RUNTIME_IMAGE, "")
        else:
            runtime, _, version = role.partition("-")
            names[role] = settings.image(RUNTIMES[runtime].images[0], version)
    return names


@dataclass(frozen=True)
class Built:
    image: str
    """The image ID (sha256 of its config)."""
    log: str


class BuildFailed(AssertionError):
    def __init__(self, log: str) -> None:
        super().__init__(log[-6000:])
        self.log = log


class Buildah:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.roles: list[str] = []
        self.driver = "overlay"
        probe = self.run("from", "scratch", check=False)
        if probe.returncode != 0 or self.run("mount", "working-container", check=False).returncode:
            self.remove()
            self.driver = "vfs"
        self.run("rm", "--all", check=False)

    def command(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.folder / "storage"),
            "--runroot",
            str(self.folder / "run"),
            "--storage-driver",
            self.driver,
            *args,
        ]

    def run(
        self, *args: str, stdin: bytes | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            self.command(*args), input=stdin, capture_output=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args)}: {done.stderr.decode()[-3000:]}")
        return done

    def load_base_images(self, layout: Path) -> dict[str, str]:
        """Every image of the layout into this storage, under its mirror name: {role: name}.
        Pulled through a link with a plain path, since buildah names an image pulled from a
        layout after its folder and refuses a `.cache` one."""
        index = json.loads((layout / "index.json").read_text())
        self.roles = [
            m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
        ]
        link = self.folder / "layout"
        link.symlink_to(layout)
        names = mirror_names(self.roles)
        for role, name in names.items():
            image = self.run("pull", "-q", f"oci:{link}:{role}").stdout.decode().split()[-1]
            self.run("tag", image, name)
        return names

    def build(
        self,
        context: bytes | Path,
        *,
        secrets: Mapping[str, Path] | None = None,
        build_args: Mapping[str, str] | None = None,
    ) -> Built:
        """`buildah bud` of a context: a .tar.gz on stdin (as the stores hand it out) or a
        folder (as Shipwright extracts an OCI source). Raises BuildFailed with the log."""
        iidfile = self.folder / "iid"
        iidfile.unlink(missing_ok=True)
        options = [
            "bud",
            "--isolation",
            "chroot",
            "--pull=never",
            "--timestamp",
            "0",
            "--http-proxy=false",
            "--iidfile",
            str(iidfile),
        ]
        for name, path in (secrets or {}).items():
            options += ["--secret", f"id={name},src={path}"]
        for name, value in (build_args or {}).items():
            options += ["--build-arg", f"{name}={value}"]
        stdin = context if isinstance(context, bytes) else None
        target = "-" if isinstance(context, bytes) else str(context)
        done = subprocess.run(
            self.command(*options, target),
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
        )
        log = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise BuildFailed(log)
        return Built(iidfile.read_text().strip(), log)

    def config(self, image: str) -> dict[str, Any]:
        """The image's OCI config: {"config": {"User", "Entrypoint", "Cmd", ...}, "history"}."""
        inspected = json.loads(self.run("inspect", "--type", "image", image).stdout)
        config: dict[str, Any] = json.loads(inspected["Config"])
        return config

    def run_image(self, image: str) -> subprocess.CompletedProcess[str]:
        """Run the image as a container runtime would: its Entrypoint and Cmd, as its User, in
        its WorkingDir, with its Env (buildah run applies the working container's config)."""
        settings = self.config(image)["config"]
        argv = [*(settings.get("Entrypoint") or []), *(settings.get("Cmd") or [])]
        container = self.run("from", "--pull=never", "-q", image).stdout.decode().strip()
        try:
            done = self.run(
                "run", "--isolation", "chroot", container, "--", *argv, check=False, timeout=120
            )
        finally:
            self.run("rm", container)
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )

    def files(self, image: str, folder: str) -> dict[str, bytes]:
        """The regular files under `folder` in the image, by path relative to it."""
        container = self.run("from", "--pull=never", "-q", image).stdout.decode().strip()
        try:
            root = Path(self.run("mount", container).stdout.decode().strip())
            base = root / folder.lstrip("/")
            return {
                str(path.relative_to(base)): path.read_bytes()
                for path in sorted(base.rglob("*"))
                if path.is_file() and not path.is_symlink()
            }
        finally:
            self.run("rm", container)

    def remove(self) -> None:
        self.run("rm", "--all", check=False)
        self.run("umount", "--all", check=False)
        shutil.rmtree(self.folder / "storage", ignore_errors=True)
        shutil.rmtree(self.folder / "run", ignore_errors=True)
