"""`dermserve-web`: the clinicians' page, a client of the gRPC front like any other (its TLS and
bearer token apply). server.py serves the static page and a small JSON API over HTTP; front.py
turns each API call into gRPC calls to the front and the answers into JSON. Nothing uploaded is
stored or logged: an image lives in memory for the length of its request."""
