"""What every client of the front shares: its connection settings (declared once through
core/config, so the CLI and the web page read the same flags and DERMSERVE_* variables), the
channel, the call metadata, and a failed call as a {code, reason, message} entry. A client
imports this, protocol/ and the stubs; never the front, the worker or Redis."""
