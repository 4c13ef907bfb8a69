"""`python -m devtools.bench.peers`: dermserve against KServe, MLServer and BentoML (run.py)."""

from devtools.bench.peers.run import main

if __name__ == "__main__":
    main()
