"""dermserve's attack suite: a hostile corpus run against a TLS + token stack on loopback
(`make attack`; `python -m devtools.attack --help`). A development tool, never imported by the
runtime packages."""
