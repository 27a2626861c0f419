"""A Chaos Toolkit extension for dbchaos: actions and probes that drive a dbchaos server.

Importable without Chaos Toolkit installed: the activities are plain functions over
:class:`dbchaos.client.DbChaosClient`; only :func:`discover` (for ``chaos discover``) needs
``chaostoolkit-lib``. Activities read, as Chaos Toolkit passes them:

* ``configuration``: ``dbchaos_url`` (default ``$DBCHAOS_URL`` or ``http://127.0.0.1:8080``),
  ``dbchaos_timeout_s`` (default 30);
* ``secrets``: ``dbchaos_token`` (default ``$DBCHAOS_TOKEN``), when the server has tokens.

See docs/chaostoolkit.md for an experiment.
"""

from __future__ import annotations

from typing import Any

import dbchaos

__version__ = dbchaos.__version__
__all__ = ["discover"]


def discover(discover_system: bool = True) -> dict[str, Any]:
    """What ``chaos discover dbchaos`` reports: this extension's actions and probes."""
    from chaoslib.discovery.discover import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        discover_actions,
        discover_probes,
        initialize_discovery_result,
    )

    discovery: dict[str, Any] = initialize_discovery_result("dbchaos", __version__, "dbchaos")
    discovery["activities"].extend(discover_actions("dbchaos.chaostoolkit.actions"))
    discovery["activities"].extend(discover_probes("dbchaos.chaostoolkit.probes"))
    return discovery
