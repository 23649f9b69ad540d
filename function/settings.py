"""Every environment variable the function reads, in one place (the base images' settings are
made here from the images the runtimes declare, runtimes.IMAGES).

`config/settings.env` and the Knative settings ConfigMap are generated from this model
(`python -m function settings`), and a test keeps them in step.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import setting_formats as formats
from .boundary import is_dns_label
from .errors import ConfigurationError
from .runtimes import IMAGES, BaseImage

PREFIX = "BUILD_CONTEXT_"


class _BeforeImages(BaseSettings):
    """The settings up to the base images, which the runtimes declare (runtimes.IMAGES); the
    rest is `Settings`. Fields keep this order in the generated documents."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    # --- serving -------------------------------------------------------------------------
    port: int = Field(
        8080,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("PORT", "BUILD_CONTEXT_PORT"),
        description="HTTP port (PORT, as Knative sets it).",
    )
    host: str = Field("0.0.0.0", description="Address the HTTP server binds to.")
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Worker threads of each server process; 0: 2 with the filesystem store, 4 "
        "with a store on the network (ConfigMap, S3, OCI). See docs/serving.md.",
    )
    processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Server processes sharing the port, each with its own threads; 0: two per "
        "CPU the container may use (affinity and cgroup quota), at most 4. See docs/serving.md.",
    )
    shutdown_grace_seconds: float = Field(
        25.0, ge=0, le=300, description="On SIGTERM, how long in-flight requests may take."
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body, as sent (413 unread above)."
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=16384, le=1024 * 1024, description="Largest request line and headers."
    )
    read_timeout_seconds: int = Field(
        30, ge=1, le=3600, description="Time to send a request, from its first byte or connect."
    )
    idle_timeout_seconds: int = Field(
        120, ge=1, le=3600, description="How long an idle keep-alive connection stays open."
    )
    event_source: str = Field(
        "/build-context", min_length=1, description="`source` attribute of reply events."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the JSON log lines."
    )
    handlers: Literal["all", "create", "cleanup"] = Field(
        "all",
        description="Which event types this instance answers: `create` (requests), "
        "`cleanup` (PingSource), or `all`.",
    )

    # --- sender identity -----------------------------------------------------------------
    auth: Literal["off", "oidc"] = Field(
        "off",
        description="`oidc`: every event must carry a Knative Eventing sender-identity token "
        "(`authentication-oidc`) of an allowed subject; `off` (the local default): anyone who "
        "reaches the port may call. See docs/security.md.",
    )
    auth_issuer: str = Field(
        "https://kubernetes.default.svc.cluster.local",
        min_length=1,
        max_length=500,
        description="Issuer (`iss`) of the cluster's ServiceAccount tokens.",
    )
    auth_discovery_url: str = Field(
        "",
        max_length=500,
        description="OIDC discovery document of the issuer. Empty: "
        "`<issuer>/.well-known/openid-configuration`.",
    )
    auth_ca_file: str = Field(
        "",
        description="CA bundle for discovery and keys. Empty: the pod's ServiceAccount CA when "
        "mounted, else the system CAs.",
    )
    auth_token_file: str = Field(
        "",
        description="Bearer token presented when reading discovery and keys (the apiserver "
        "serves them to service accounts). Empty: the pod's ServiceAccount token when mounted.",
    )
    auth_keys_refresh_seconds: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="How long the issuer's keys are cached; an unknown key id re-reads them "
        "sooner (at most every 30 s).",
    )
    auth_create_audience: str = Field(
        "build-context",
        min_length=1,
        max_length=253,
        description="Audience the request handler's tokens must carry (the Trigger's "
        "`subscriber.audience`).",
    )
    auth_create_subjects: str = Field(
        "build-context-requests-oidc-eventing.knative.dev-trigger",
        description="Comma-separated subjects allowed to send requests: "
        "`system:serviceaccount:NS:NAME`, or a bare NAME in our own namespace. Default: the "
        "OIDC ServiceAccount of the Trigger `build-context-requests`.",
    )
    auth_cleanup_audience: str = Field(
        "build-context-cleanup",
        min_length=1,
        max_length=253,
        description="Audience the cleanup handler's tokens must carry (the PingSource's "
        "`sink.audience`).",
    )
    auth_cleanup_subjects: str = Field(
        "build-context-cleanup-oidc-sources.knative.dev-pingsource",
        description="Comma-separated subjects allowed to ping cleanup, as above. Default: the "
        "OIDC ServiceAccount of the PingSource `build-context-cleanup`.",
    )

    # --- storage -------------------------------------------------------------------------
    storage: Literal["filesystem", "configmap", "s3", "oci"] = Field(
        "filesystem", description="Where contexts are stored."
    )
    overflow_storage: Literal["", "s3", "oci"] = Field(
        "",
        description="Store for contexts a ConfigMap cannot hold (too large, or the namespace "
        "cap is reached). Empty: such contexts fail with ContextTooLarge/StorageUnavailable.",
    )
    fs_root: Path = Field(
        Path(".build-contexts"), description="Root folder of the filesystem store."
    )
    namespace: str = Field(
        "",
        description="Namespace of ConfigMaps (and of S3 keys). Empty: the pod's own namespace, "
        "else `default`.",
    )
    allowed_namespaces: str = Field(
        "",
        description="Comma-separated extra namespaces a request may name in `namespace`.",
    )
    configmap_max_bytes: int = Field(
        1_000_000,
        ge=1024,
        le=1_040_000,
        description="Largest archive stored in a ConfigMap (the apiserver's limit is 1 MiB for "
        "the whole object).",
    )
    configmap_namespace_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Cap on the total archive bytes of our ConfigMaps per namespace.",
    )
    configmap_namespace_max_count: int = Field(
        2000, ge=0, description="Cap on the number of our ConfigMaps per namespace."
    )
    configmap_usage_refresh_seconds: float = Field(
        30.0, ge=0, description="How often the per-namespace usage is re-read from the apiserver."
    )
    s3_bucket: str = Field("", description="S3 bucket (required with the s3 store).")
    s3_prefix: str = Field("build-contexts/", description="Key prefix for everything we write.")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint; empty for AWS.")
    s3_region: str = Field("", description="Region; empty: boto3's standard chain (AWS_REGION).")
    s3_force_path_style: bool = Field(
        False, description="Path-style addressing (MinIO, SeaweedFS, Ceph RGW)."
    )
    s3_sse: Literal["", "AES256", "aws:kms"] = Field("", description="Server-side encryption.")
    s3_sse_kms_key_id: str = Field("", description="KMS key id with s3_sse=aws:kms.")
    s3_multipart_threshold_bytes: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Archives above this use multipart upload."
    )
    oci_registry: str = Field(
        "",
        description="Registry host[:port] of the OCI store (required with the oci store), "
        "e.g. `registry.example.com` or `10.0.0.5:5000`.",
    )
    oci_repository: str = Field(
        "build-contexts",
        description="Repository path prefix; each function gets `<prefix>/<namespace>/<function>`.",
    )
    oci_docker_config: str = Field(
        "",
        description="Path of a docker config.json (a mounted kubernetes.io/dockerconfigjson "
        "pull secret) with the registry's credentials; empty: `$DOCKER_CONFIG/config.json` if "
        "it exists, else anonymous.",
    )
    oci_ca_file: str = Field(
        "", description="PEM bundle of CAs the registry's TLS certificate chains to; empty: system."
    )
    oci_insecure_http: bool = Field(
        False, description="Talk plain HTTP to the registry (never on by default)."
    )

    # --- lifetimes -----------------------------------------------------------------------
    ttl_seconds: int = Field(604800, ge=60, description="Default lifetime of a context.")
    max_ttl_seconds: int = Field(
        2592000, ge=60, description="Largest `ttlSeconds` a request may ask for."
    )
    keep_latest: int = Field(
        1, ge=0, description="Newest contexts per function that cleanup always keeps."
    )
    cleanup_grace_seconds: int = Field(
        300, ge=0, description="Contexts younger than this are never deleted."
    )
    cleanup_min_ttl_seconds: int = Field(
        3600,
        ge=60,
        description="Smallest `ttlSeconds` a PingSource event may ask cleanup for (the command "
        "line is not held to it).",
    )
    cleanup_page_size: int = Field(500, ge=1, le=1000, description="Items per list page.")
    cleanup_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Requests the S3 and OCI stores keep in flight during cleanup: contexts "
        "read while listing, and contexts re-checked and deleted (each a few requests in turn). "
        "Raise it for a distant endpoint.",
    )

    # --- limits per caller ---------------------------------------------------------------
    max_contexts_per_function: int = Field(
        50,
        ge=0,
        description="Most live (unexpired) contexts one function name may hold, over every "
        "store; 0: no cap. Never exceeded: a reuse of a live context is allowed, the same "
        "content after it expired counts as a new one.",
    )
    max_bytes_per_function: int = Field(
        128 * 1024 * 1024,
        ge=0,
        description="Most archive bytes of live contexts one function name may hold; 0: no cap.",
    )

    # --- request limits ------------------------------------------------------------------
    max_file_bytes: int = Field(1024 * 1024, ge=1, description="Largest single source file.")
    max_total_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Largest sum of all source files."
    )
    max_files: int = Field(200, ge=1, description="Most source files in one request.")
    max_path_length: int = Field(100, ge=8, le=100, description="Longest file path (bytes).")
    max_dependencies: int = Field(100, ge=0, description="Most dependency entries.")
    max_metadata_entries: int = Field(32, ge=0, description="Most `metadata` entries.")
    allow_url_dependencies: bool = Field(
        False, description="Allow URL, VCS and file dependencies (off: only registry packages)."
    )
    require_locked_dependencies: bool = Field(
        False,
        description="Refuse requests whose dependencies come without a `lockFile` "
        "(hermetic builds). docs/validation.md, Locked dependencies.",
    )
    secret_scan: Literal["refuse", "warn", "off"] = Field(
        "refuse",
        description="Credentials found in the source (private keys, cloud keys, tokens, "
        "kubeconfigs, passwords in URLs, high-entropy assignments): `refuse` the request "
        "(InvalidSource), `warn` (log and list them in the reply), or `off`. docs/validation.md, Secrets.",
    )

    # --- supply chain --------------------------------------------------------------------
    signing_key_file: str = Field(
        "",
        description="PEM private key (Ed25519 or ECDSA P-256, unencrypted; a mounted Secret) "
        "that signs each context's provenance. Empty: provenance is stored unsigned and the "
        "reply says so. docs/deploy.md, Provenance.",
    )

    # --- images --------------------------------------------------------------------------
    registry_mirror: str = Field(
        "",
        description="Prefix put before every base image, e.g. `mirror.local/library/`, "
        "for air-gapped clusters.",
    )
    # then `<key>_image` for each runtime's base image, and `Settings` (retries on)


if TYPE_CHECKING:  # the image fields are read through Settings.template/image, by image
    _WithImages = _BeforeImages
else:
    _WithImages = create_model(
        "_WithImages", __base__=_BeforeImages, **{i.setting: i.field() for i in IMAGES}
    )


class Settings(_WithImages):
    """Every setting: the fields above, the runtimes' image settings, then these."""

    # --- retries -------------------------------------------------------------------------
    retry_attempts: int = Field(4, ge=1, le=20, description="Attempts per storage call.")
    retry_base_delay_seconds: float = Field(
        0.1, ge=0, description="First backoff delay; doubles per attempt, with full jitter."
    )
    retry_max_delay_seconds: float = Field(2.0, ge=0, description="Cap on one backoff delay.")
    retry_deadline_seconds: float = Field(
        20.0, gt=0, description="Overall time budget of one storage call including retries."
    )

    # Formats of single values: function/setting_formats.py
    _subjects = field_validator("auth_create_subjects", "auth_cleanup_subjects")(
        staticmethod(formats.subjects)
    )
    _mirror = field_validator("registry_mirror")(staticmethod(formats.registry_mirror))
    _prefix = field_validator("s3_prefix")(staticmethod(formats.key_prefix))
    _registry = field_validator("oci_registry")(staticmethod(formats.registry_host))
    _repository = field_validator("oci_repository")(staticmethod(formats.repository_path))

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.ttl_seconds > self.max_ttl_seconds:
            raise ValueError("BUILD_CONTEXT_TTL_SECONDS is above BUILD_CONTEXT_MAX_TTL_SECONDS")
        uses_s3 = self.storage == "s3" or self.overflow_storage == "s3"
        if uses_s3 and not self.s3_bucket:
            raise ValueError("BUILD_CONTEXT_S3_BUCKET is required when S3 is used")
        uses_oci = self.storage == "oci" or self.overflow_storage == "oci"
        if uses_oci and not self.oci_registry:
            raise ValueError("BUILD_CONTEXT_OCI_REGISTRY is required when the oci store is used")
        for ns in self.extra_namespaces:
            if not is_dns_label(ns):
                raise ValueError(
                    f"BUILD_CONTEXT_ALLOWED_NAMESPACES: {ns!r} is not a namespace name"
                )
        return self

    @property
    def server_threads(self) -> int:
        """`threads`, else 2 for the filesystem store (a thread hands the GIL to its siblings
        after every system call, and its waits are short) and 4 for a store on the network
        (more requests wait on it at once). docs/performance.md, "Processes and threads"."""
        if self.threads:
            return self.threads
        return 2 if self.storage == "filesystem" else 4

    @cached_property
    def extra_namespaces(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.allowed_namespaces.split(",") if n.strip())

    @cached_property
    def namespaces(self) -> frozenset[str]:
        """Every namespace this function writes to: the one allow-list, checked by the service."""
        return frozenset({self.home_namespace, *self.extra_namespaces})

    @cached_property
    def home_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        sa_ns = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        try:
            return sa_ns.read_text().strip() or "default"
        except OSError:
            return "default"

    def handles(self, handler: str) -> bool:
        """Whether this instance answers `handler` (`create` or `cleanup`)."""
        return self.handlers in ("all", handler)

    def template(self, image: BaseImage) -> str:
        """The operator's template of a runtime's base image (its setting, else the default)."""
        return str(getattr(self, image.setting))

    def image(self, image: BaseImage, version: str) -> str:
        """The reference a Dockerfile builds FROM: mirror, then the template at `version`."""
        return self.registry_mirror + self.template(image).replace("{version}", version)


def env_name(field_name: str) -> str:
    if field_name == "port":
        return "PORT"
    return PREFIX + field_name.upper()


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a bad value raises ConfigurationError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"][0] if first["loc"] else ""
        variable = env_name(str(loc)) if loc else "configuration"
        details = [
            f"{env_name(str(e['loc'][0])) if e['loc'] else ''}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigurationError(
            variable, first["msg"], "Fix or unset it and start again.", details
        ) from None
