"""`dermserve`, the command-line client: classify and models (cli/main.py), batch jobs
(cli/batch.py), all through one connection module (client/connection.py). It talks to the service
over gRPC only."""
