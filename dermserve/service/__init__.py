"""The gRPC front service: servicers, interceptors (errors, auth, stream limits), health,
reflection and metrics, over the transport-free core (core/)."""
