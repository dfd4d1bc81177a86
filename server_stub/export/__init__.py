"""Push export of violations to a SOC's tools: syslog (RFC 5424 + CEF over UDP, TCP or TLS), OCSF JSON
lines to a rotated file, and signed webhooks (JSON, or Slack-compatible text).

    config.py   the `export:` section of the server's config file, validated once
    cef.py      CEF and RFC 5424 framing (the field mapping is in its docstring)
    sinks.py    one destination per kind of sink, `deliver(events)`
    service.py  a thread per sink following its persistent cursor (store/exports.py), with backoff

The OCSF mapping is shared with the agent's local event log: endpoint_contract/ocsf.py.
"""

# Only the configuration here: the CLI reads it before it knows the [server] extra is installed,
# and the runner (service.py) needs SQLAlchemy.
from server_stub.export.config import ExportConfig, load_export_config

__all__ = ["ExportConfig", "load_export_config"]
