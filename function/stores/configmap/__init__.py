"""One immutable ConfigMap per (function, contentHash), in the function's namespace.

A builder pod mounts the ConfigMap and reads the archive as `tar://` (docs/configmap.md).
Every ConfigMap lives in etcd, whose quota is shared by the whole cluster: the capacity guard
(capacity.py) keeps archives above BUILD_CONTEXT_CONFIGMAP_MAX_BYTES from the apiserver and caps
each namespace (bytes and count); both send the context to the overflow store when one is
configured. The apiserver calls (api.py) move only metadata where that is enough; the codec
(codec.py) says what the object holds; the client's failures are read in one place (errors.py).
"""

from .api import load_configuration
from .capacity import APISERVER_LIMIT, Caps, Usage
from .codec import KEY, REQUIRED_VERBS, configmap_body, configmap_name, record_from_metadata
from .store import ConfigMapHandle, ConfigMapStore

__all__ = [
    "APISERVER_LIMIT",
    "KEY",
    "REQUIRED_VERBS",
    "Caps",
    "ConfigMapHandle",
    "ConfigMapStore",
    "Usage",
    "configmap_body",
    "configmap_name",
    "load_configuration",
    "record_from_metadata",
]
