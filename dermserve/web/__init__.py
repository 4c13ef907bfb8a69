"""`dermserve-web`: the clinicians' page, a client of the gRPC front like any other (its TLS and
bearer token apply). server.py runs uvicorn with the limits a hostile network needs; app.py's
routes serve the static page and a small JSON API; guards.py checks every request first (framing,
Host, CSRF, identity); identity.py reads the user an authenticating proxy names; front.py turns
each API call into gRPC calls to the front, on the user's behalf, and the answers into JSON.
Nothing uploaded is stored or logged: an image lives in memory for the length of its request."""
